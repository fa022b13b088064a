"""The operators of one warm round ranked three ways — by calls, by self CPU time and by self GPU time — to find what
a round issues once per client (calls near N) and what the device waits on (profile_step.py ranks by CPU time only).

    python benchmarks/profile_calls.py psl 1000 1 cuda > benchmarks/results/PROFILE-cuda-calls-psl-1000x1.txt
"""

import argparse

import torch

from locfedmix.engines.backends.device import resolve_device
from profile_step import profiled_round

TOP = 25


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("algorithm")
    parser.add_argument("clients", type=int)
    parser.add_argument("per_client", type=int)
    parser.add_argument("device", nargs="?", default="cpu")
    args = parser.parse_args()
    prof, seconds, engine = profiled_round(args.algorithm, args.clients, args.per_client,
                                           resolve_device(args.device))
    events = prof.key_averages()
    print(f"{args.algorithm} {args.clients}x{args.per_client} ({engine}): {seconds:.3f} s, "
          f"{sum(e.count for e in events)} calls, operators' CPU {sum(e.self_cpu_time_total for e in events) / 1e3:.1f}"
          f" ms, GPU kernels {sum(e.self_device_time_total for e in events) / 1e3:.1f} ms")
    for title, key in [("calls", lambda e: -e.count), ("self CPU", lambda e: -e.self_cpu_time_total),
                       ("self GPU", lambda e: -e.self_device_time_total)]:
        print(f"== by {title}: calls | name | self CPU ms | self GPU ms")
        for e in sorted(events, key=key)[:TOP]:
            cpu_ms, device_ms = e.self_cpu_time_total / 1e3, e.self_device_time_total / 1e3
            print(f"{e.count} | {e.key[:110]} | {cpu_ms:.1f} | {device_ms:.2f}")


if __name__ == "__main__":
    main()
