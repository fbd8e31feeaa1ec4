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
# Queries and passages for cross-encoders: several scripts, an empty query, special tokens written out in a text.
QUERIES = ["the cat sat on a mat", "кошка сидит на коврике", "搜索引擎把文本映射到意义", "x [SEP] y </s> z", ""]
PASSAGES = [
    "die Katze sitzt auf der Matte während Hunde laufen",
    "le chat est assis sur le tapis près de la rivière",
    "Hunde laufen schnell zum Haus am Fluss " * 12,
    "猫坐在垫子上狗跑得很快" * 20,
]
