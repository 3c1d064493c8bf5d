"""``python -m trek_tracker.cli`` is ``trek-track``."""

from trek_tracker.cli import main

main()
