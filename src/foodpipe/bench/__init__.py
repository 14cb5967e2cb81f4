"""``foodpipe bench``: the pipeline measured against the machine's own ceilings.

Absolute numbers on a shared machine are noisy; ratios measured side by side, in the
same run, on the same table and the same data, are not. So every run measures, in turn:

- the ceilings: what PostgreSQL can ingest (``COPY``, multi-row batches, one row per
  commit) and what Kafka can move (Kafka's own ``ProducerPerformance``, a bare
  confluent-kafka drain loop);
- the pipeline: ``foodpipe produce --rate 0`` pre-loading a topic, 1, 2 and 3
  ``foodpipe consume`` processes draining it into a fresh table, fixed-rate runs at
  10/s and 1,000/s for rate accuracy and end-to-end latency, and the peak RSS of every
  service process;

and reports each pipeline figure as a ratio to its ceilings *of the same run*, with the
median and spread over the runs. Modules:

- :mod:`.data`: the prepared orders every database ceiling writes;
- :mod:`.scratch`: fresh databases (from a template with ``init.sql``) and topics;
- :mod:`.procs`: ``foodpipe`` subprocesses and their peak RSS (VmHWM);
- :mod:`.ceilings`: DB-COPY, DB-BATCH, DB-NAIVE, KAFKA-PRODUCE, KAFKA-CONSUME;
- :mod:`.pipeline`: pre-load, drain, fixed-rate runs;
- :mod:`.metrics`: names, units, ratios and targets; :mod:`.stats`: median and spread;
- :mod:`.runner`: one bench = N runs of everything; :mod:`.report`: JSON, Markdown, PNG;
- :mod:`.schema`: the JSON Schema of the result file.
"""
