"""UDR demonstration retrieval: encoder, BM25, LM-feedback scorer, ranking loss, mining, FAISS
index, training, and the demonstration selectors used by held-out evaluation.

Entry points: `retrieval.train.train_udr`, `retrieval.selectors.make_demo_selector`,
`retrieval.index.Retriever.load`. Submodules import torch/faiss lazily where they can.
"""
