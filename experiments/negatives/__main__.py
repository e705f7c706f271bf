from experiments.negatives.run import main

raise SystemExit(main())
