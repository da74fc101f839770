"""A trained UDR retriever on the Hub: the encoder is the model; the pool and its index stay local."""

from __future__ import annotations

from ..adapters.publishing import MethodExtras, looks_like_path_value, markdown_table

RETRIEVER_METHOD = "udr"  # the `method` a retriever folder is published as

UDR_SNIPPET = '''```python
import torch
from transformers import AutoModel, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
encoder = AutoModel.from_pretrained("{repo_id}").eval()

def embed(texts):  # mean pooling over real tokens, as in training
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)

prefix = "Sentiment of the sentence: "  # the task's instruction prefix
query = embed([prefix + "a gripping film"])
candidates = embed([prefix + "dull and long\\tnegative", prefix + "a joy\\tpositive"])
print((query @ candidates.T).argsort(descending=True))  # best demonstration first; put it last in the prompt
```
With instructmt, `instructmt.retrieval.encoder.BiEncoder.from_pretrained(snapshot_download("{repo_id}"))`
gives the same encoder, and `instructmt retrieve build-index` rebuilds a FAISS index over your pool.'''


def udr_hub_extras(run) -> MethodExtras:
    record = run.meta.get("retriever") or {}
    training = record.get("training") or {}
    tasks = record.get("tasks") or run.seen
    section = ("UDR demonstration retriever: a bi-encoder trained with LM feedback (ranking loss + in-batch loss) "
               "to pick in-context demonstrations. Query = task instruction prefix + input; candidate = prefixed "
               "input + `\\t` + output; score = dot product of mean-pooled embeddings; the most similar "
               f"demonstration goes last, next to the test input. Trained over {len(tasks)} task(s)."
               " The demonstration pool (`pool.jsonl`, task data) and its FAISS index are not published.")
    cfg = training.get("config") if isinstance(training, dict) else None
    if isinstance(cfg, dict):
        section += "\n\n" + markdown_table([(k, v) for k, v in cfg.items() if isinstance(v, (int, float, str, bool))
                                    and not looks_like_path_value(v)])
    return MethodExtras(section=section, tags=["udr", "retrieval", "in-context-learning"],
                        library_name="transformers", snippet=UDR_SNIPPET, weights="full",
                        what="**UDR** demonstration retriever (bi-encoder)")
