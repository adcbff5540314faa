"""The ``segany`` command line: ``serve | annotate | embed | export | bench | models | train | eval``."""
