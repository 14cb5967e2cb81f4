from foodpipe.cli import main

raise SystemExit(main())
