"""This project's own tests run under the suite's Hypothesis profiles (``ci`` under CI, else ``dev``;
``--hypothesis-profile`` picks another). Only here: the installed plugin registers and loads nothing."""

from teeio_conformance.conformance import settings

settings.register()
