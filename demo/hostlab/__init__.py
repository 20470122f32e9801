"""A multi-host mesh on one machine: network namespaces joined by a bridge, provisioned by the
same scripts as the Vagrant VMs (`vagrant/provision/`). `python -m demo.hostlab up|down|status`."""
