"""Analysis: proximity between datasets (``proximity``, ``counting``), statistics over seeds
(``stats``), seed-aggregated tables (``tables``) and figures (``figures``)."""
