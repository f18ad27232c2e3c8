"""One package per API, alike: ``chat``, ``completions``, ``responses`` and ``messages`` each hold
an ``Api`` subclass and its ``API`` (``__init__``), its ``profiles`` and its ``assembler`` (how its
stream folds into its non-stream answer); ``openai_base``, ``openai_conventions`` and
``vllm_releases`` are what the OpenAI-style ones share. Sans-I/O, like the core.
"""
