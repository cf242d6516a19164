from manifold.cli import main

raise SystemExit(main())
