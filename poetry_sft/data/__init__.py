"""Poems in: data files checked before loading (datafiles), prompts rendered with the chat template
(prompts), and the corpus cleaned, selected, tokenised and split with a cache (corpus)."""
