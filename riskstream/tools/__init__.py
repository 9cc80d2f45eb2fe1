"""Tools around the job: the exactly-once audit (``audit``), fault injection (``chaos``), the end-to-end demo
(``demo``), the analyst's report (``report``) and the decisions reader (``consume``). They use the job
(``pipelines``) and the operations package (``riskstream.ops``); nothing below imports them, and they never
import the CLI."""
