"""Image and video inputs of ``pedcrowd infer``: finding them (:mod:`.sources`) and
decoding them in background threads (:mod:`.decode`)."""
