"""The inference core, with no web framework in it: decoding, pre-processing, backends, the
pipeline, post-processing, RLE, the batcher, admission, and the data plane every front door calls."""
