"""Runners: small sources and sinks over :class:`bfrboost.Restorer` (image files and stdin here;
video, overlapped and dataset runners beside it), all sharing :class:`bfrboost.reports.FileReport`."""
