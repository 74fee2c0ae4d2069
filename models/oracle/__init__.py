"""ORACLE networks: the hierarchical classifier, its image head, ConvNeXt, taxonomies."""
