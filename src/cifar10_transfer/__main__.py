from cifar10_transfer.cli import main

raise SystemExit(main())
