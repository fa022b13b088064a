"""The federation's flow: rounds, steps, model exchanges and the run's state, written once against the client pool
and transport interfaces (flow/interfaces.py); it never imports a backend or a transport by name."""
