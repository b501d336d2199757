"""generator package: PyTorch networks, recording, the PPGN sampler and panels
(docs/architecture.md).

Its modules, each importing (at module level or inside a function) only modules listed
before it, besides ``common`` and ``analysis``; tests/test_layering.py checks that the
package has no import cycle:

1. ``threads`` (torch's thread counts), ``networks`` (the classifier architectures, taps,
   preprocessing, state dicts into models), ``hooked`` (any ``nn.Module``, tapped by
   module name with forward hooks), ``torchvision_models`` (torchvision-compatible
   ResNets), ``digits_resnet`` (the demo's ResNet), ``sampler`` (the PPGN sampler; no
   files), ``condition`` (PPGN with another condition network), ``fourier`` (the
   generator-free AM of Olah et al. 2017; no files);
2. ``caffe`` (``.caffemodel`` files), ``digits`` (the demo's data and classifiers);
3. ``loading`` (networks by name or reference, with their weight files), ``deepsim``
   (the DeePSiM generator), ``digits_generator`` (the demo's generator), ``images``
   (image sets);
4. ``panels`` (panel images: numpy and Pillow), ``unit_files`` (a unit's files and the
   manifests, for every panel method);
5. ``record``, ``ppgn``, ``natural``, ``am``, ``rater``: activation recording, AM runs
   (``python -m generator.am --method ppgn|fourier|natural``; ``generator.ppgn`` for
   PPGN alone) and the simulated rater.
"""
