from fcnquant.cli import main

raise SystemExit(main())
