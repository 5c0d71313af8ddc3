"""Data files of pysave's built-in gene knowledge (built by tools/build_gene_embeddings.py).

See human_minilm.json for what each file holds, its sources and versions; load them with
:mod:`pysave.gene_knowledge`.
"""
