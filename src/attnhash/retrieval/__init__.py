"""Retrieval: an index together with the model that fills it.

    retriever = Retriever.create(Encoder("runs/dpfah-fmnist-64"), source=open_dataset("fmnist"))
    retriever.add_source(open_dataset("fmnist"))         # codes + ids + metadata, checked against the model
    retriever.save("fmnist.idx")
    retriever = Retriever.open("fmnist.idx")             # loads the run recorded in the index, and checks it
    hits = retriever.search_images([pil_image], k=10)    # [[{id, distance, path, labels, label_names}, ...]]

The index alone (attnhash.index) knows codes, ids and metadata; this layer adds what needs the model:
encoding images, checking a model against an index, turning hits into results with class names.
"""

from attnhash.retrieval.retriever import Retriever, check_encoder, source_metadata

__all__ = ["Retriever", "check_encoder", "source_metadata"]
