"""generator package: PyTorch networks, recording, the PPGN sampler and panels
(docs/architecture.md).

Its modules, each importing (at module level or inside a function) only modules listed
before it, besides ``common`` and ``analysis``; tests/test_layering.py checks that the
package has no import cycle:

1. ``threads`` (torch's thread counts), ``networks`` (the classifier architectures, taps,
   preprocessing, state dicts into models), ``sampler`` (the PPGN sampler; no files);
2. ``caffe`` (``.caffemodel`` files), ``digits`` (the demo's data and classifiers);
3. ``loading`` (networks by name, with their weight files), ``deepsim`` (the DeePSiM
   generator), ``digits_generator`` (the demo's generator), ``images`` (image sets);
4. ``panels`` (panel images: numpy and Pillow);
5. ``record``, ``ppgn``, ``rater``: activation recording, AM runs (``python -m``) and
   the simulated rater.
"""
