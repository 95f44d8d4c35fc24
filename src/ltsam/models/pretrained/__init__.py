"""Pretrained backbones from other libraries (timm), fine-tuned whole or in part (``--tune``).

The libraries are the optional extra ``ltsam[pretrained]`` and are imported only when a ``timm:`` architecture
(or ``--tune lora``, peft) is used; this package imports none of them itself.
"""
