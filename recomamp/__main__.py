from recomamp.cli import main

raise SystemExit(main())
