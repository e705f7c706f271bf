from experiments.scifact_negatives.run import main

raise SystemExit(main())
