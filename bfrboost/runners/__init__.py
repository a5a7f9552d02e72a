"""Runners: small sources and sinks over :class:`bfrboost.Restorer` (image files and stdin in
``files``, video clips in ``video``; overlapped and dataset runners beside them), all sharing
:class:`bfrboost.reports.FileReport`."""
