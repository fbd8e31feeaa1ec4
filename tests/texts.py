"""Texts for tests, one per length class and script."""

SHORT = ["hello world", "A man is playing a guitar.", "Hi", "?"]
CHINESE = ["今天天气很好，我们去公园散步吧。", "机器学习是人工智能的一个分支。"]
FRENCH = ["Le chat est assis sur le tapis.", "Où est la gare la plus proche, s'il vous plaît ?"]
EMOJI = ["I love pizza 🍕🍕 so much 😍", "🙂"]
EMPTYISH = ["", "   ", "\t\n"]
# ~180 tokens: between tokenizer.json's 128 and the model's 256 (the truncation trap).
MEDIUM = [" ".join(["The quick brown fox jumps over the lazy dog near the riverbank."] * 13)]
# > 256 tokens: truncated at 256.
LONG = [" ".join(["Sentence embeddings map text to dense vectors for semantic search."] * 40)]
ALL = SHORT + CHINESE + FRENCH + EMOJI + EMPTYISH + MEDIUM + LONG
