"""The image-clusters job: k-means on whole images, grouped by content.

:mod:`kmflow.jobs.image_clusters.features` maps images to feature vectors (pixels, HOG, color
histograms, then PCA and UMAP) and stores the fitted map as a model's preprocessing (type
``images``): JSON plus numpy arrays, no pickle.
"""
