"""Inference engines for the scoring networks: PyTorch eager, ``torch.compile``, ONNX Runtime, OpenVINO.

* :mod:`.base` — the engine call, tolerances against PyTorch fp32, :func:`~.base.compare`;
* :mod:`.networks` — the UNet, encoder, decoder and LPIPS trunk as tensor-only modules with probe
  inputs (:class:`~.networks.NetworkSpec`), and the modules scoring calls through an engine;
* :mod:`.torch_eager`, :mod:`.torch_compile`, :mod:`.onnx_runtime`, :mod:`.openvino_engine` — one engine each;
* :mod:`.artifacts` — exported files cached by the weights' sha256, checked before reuse;
* :mod:`.select` — building, checking, measuring, and ``engine: auto`` (cached per machine);
* :mod:`.scoring` — paper 000 scoring's four networks on their engines.

``onnxruntime`` and ``openvino`` are the optional extra ``engines`` (``pip install 'ldm-ood[engines]'``);
without them those engines are reported unavailable and ``auto`` chooses among the others.
"""
