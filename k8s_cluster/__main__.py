"""`python -m k8s_cluster build|up|down|status`: the test cluster for development (`make cluster-up`)."""

import argparse
import json
import sys
import time

from k8s_cluster import cluster


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m k8s_cluster", description=__doc__)
    parser.add_argument("command", choices=["build", "up", "down", "status"])
    args = parser.parse_args()
    if args.command == "build":
        start = time.monotonic()
        print(cluster.ensure_built())
        print(f"{time.monotonic() - start:.0f} s")
    elif args.command == "up":
        start = time.monotonic()
        c = cluster.up()
        memory = cluster.memory_mib(c)
        print(f"cluster up in {time.monotonic() - start:.1f} s; kubeconfig: {c.kubeconfig}")
        print(
            "memory (MiB RSS): "
            + json.dumps({k: round(v) for k, v in memory.items()})
            + f" total {sum(memory.values()):.0f}"
        )
        print(f"export KUBECONFIG={c.kubeconfig}")
    elif args.command == "down":
        cluster.down()
        print("cluster stopped")
    else:
        running = cluster.is_running()
        print("running" if running else "not running")
        if running:
            print(json.dumps({k: round(v) for k, v in cluster.memory_mib().items()}))
        return 0 if running else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
