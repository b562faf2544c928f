"""A real Kubernetes API server for the tests: control plane built from Debian's source package, a node simulator."""
