"""``python -m cifar10_client``: the same as the ``cifar10-client`` command."""

import sys

from cifar10_client.cli import main

sys.exit(main())
