"""Pipeline metrics: counters kept in one Redis hash by the scripts and services
that do the work, gauges read from the stores at scrape time, and the
Prometheus exporter that serves both."""
