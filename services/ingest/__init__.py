"""Ingest: messages and detections through the gate, the detector and the bond writes."""
