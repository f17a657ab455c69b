"""The built-in demo: three kinds of agents over one shared context, in a pipeline.

``agora demo`` writes a deterministic corpus into a temporary home (document embeddings
as ``.npy``, published once into shared memory), starts an embedded runtime with the
pools of ``agora.toml`` and runs ``pipeline.json``:

    embed (query text -> vector, from the shared vocabulary matrix)
      -> retrieve (cosine similarity against the shared document matrix, top k)
      -> summarize (joins the retrieved documents' titles into an answer)

Every agent maps the same two arrays read-only; none loads a copy.
"""
