"""Image retrieval: NetVLAD (official VGG16 weights or weight-free dense-RootSIFT VLAD), FAISS shortlists.

Modules: ``config`` (presets ``CONFS`` -> ``RetrievalConfig``), ``netvlad`` (layer, initialisation, official
model), ``mat_loader`` (official .mat weights), ``dense_vlad`` (weight-free model and its local features),
``pca`` (the PCA of global descriptors), ``index`` (the FAISS wrapper: flat/IVF/IVF-PQ with an exact torch
fallback), ``global_descriptors`` (cached global descriptors), ``shortlist`` (pairs file; CLI), ``scale``
(chunked, sharded IVF-PQ for millions of images), ``train`` (weakly supervised triplet training; CLI),
``rerank`` (CLI name of ``pose.verify_shortlist``).
"""
