"""Image retrieval: NetVLAD (official VGG16 weights or weight-free dense-RootSIFT VLAD), FAISS shortlists.

Modules: ``netvlad`` (layer, initialisation, official model), ``mat_loader`` (official .mat weights),
``index`` (FAISS flat/IVF/IVF-PQ with an exact torch fallback), ``extract`` (configurations and
cached global descriptors), ``shortlist`` (pairs file; CLI), ``train`` (weakly supervised triplet training; CLI).
"""
