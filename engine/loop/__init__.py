"""The loop itself: projects, the run state machine and approval, preparing a run's data, reviews and iterations."""
