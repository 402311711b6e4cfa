"""Loss parts shared by several methods; each method file says which it uses and with what weights.

    pairwise        label similarities, DPSH's pairwise likelihood, memory bank, batch/bank partners
    quantization    ||u - sign(u)||^2
    straight_through sign with an identity (or clipped) backward
    classification  cross-entropy / BCE of a classification branch
    similarity      SSDH's semantic structure S from pretrained features (unsupervised methods)
"""
