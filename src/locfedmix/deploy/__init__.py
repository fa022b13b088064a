"""Deployment on Flower: the ServerApp, the ClientApp, the Flower app a config becomes, and a local federation
of SuperNodes for trials and tests (docs/deploy.md). Needs the `flower` extra."""
