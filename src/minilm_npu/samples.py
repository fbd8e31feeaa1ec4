"""Sample texts shared by the benchmark and the verification suite.

``MIXED_24`` follows the port report's protocol: 24 sentences in English, Chinese and French, with punctuation,
numbers, very short and long ones. Their lengths are deliberately uneven (1 to ~170 word pieces): that is what
real traffic looks like, and it is exactly where padding every sequence of a batch to the longest one costs most.
One sentence lies between the tokenizer file's 128 tokens and the model's 256, so a wrong truncation shows.
"""

from __future__ import annotations

_LONG = (
    "Sentence embeddings turn a piece of text into a single dense vector, so that texts with similar meanings end "
    "up close to each other; this makes semantic search, clustering, deduplication and retrieval-augmented "
    "generation possible with nothing more than a nearest-neighbour index. A small model such as all-MiniLM-L6-v2, "
    "with six layers and 384 dimensions, is often good enough, and it is cheap: on a modern accelerator it embeds "
    "thousands of sentences per second, while on a laptop CPU it still handles a few hundred. Yet how fast it "
    "really runs depends less on the hardware than on the engine: padding every sentence of a batch to the "
    "longest one, calling hundreds of tiny operators from Python, or copying tensors back and forth between host "
    "and device can waste most of the time."
)

MIXED_24: list[str] = [
    "Hello!",
    "How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street.",
    "今天天气很好，我们去公园散步吧。",
    "机器学习是人工智能的一个重要分支，它让计算机从数据中学习。",
    "北京是中国的首都。",
    "Le chat est assis sur le tapis.",
    "Où est la gare la plus proche, s'il vous plaît ?",
    "La recherche sémantique permet de retrouver des documents par leur sens plutôt que par leurs mots exacts.",
    "?!...",
    "Price: $1,299.99 (incl. 20% VAT) — order #A-4471 ships on 2024-03-15.",
    "3.14159 2.71828 1.41421 1.73205",
    "Call +1 (555) 010-4477 before 9:30 a.m., or e-mail support@example.com!!!",
    "OK",
    "Vector databases store embeddings and answer nearest-neighbour queries in milliseconds.",
    "The meeting was moved from Tuesday to Thursday because two of the five speakers had a conflict.",
    "I can't believe it's already November; the year went by so fast!",
    "向量检索系统可以在毫秒级别内从数百万条记录中找到最相似的文本。",
    "Les modèles d'embedding multilingues associent des phrases de langues différentes à des vecteurs proches.",
    "Ascend NPUs, CUDA GPUs and plain CPUs should all give the same vectors, up to rounding.",
    "In 1969, Apollo 11 landed on the Moon; 600 million people watched the broadcast live.",
    "Please summarize the following paragraph in three bullet points, keeping all numbers unchanged.",
    _LONG,
]

#: One short sentence, for the batch-1 latency run.
SHORT_SENTENCE = "A man is playing a guitar."

#: Texts the int8 engine calibrates its activation ranges on at load time (none of them appear in the tests):
#: short and long, several scripts, numbers and punctuation, like the traffic it will see.
CALIBRATION_TEXTS: list[str] = [
    "Hi there",
    "Yes.",
    "What time does the library open on Sundays?",
    "A woman is slicing an onion in the kitchen.",
    "Two dogs are running through a field of tall grass.",
    "The stock market fell 3.2% on Monday after the central bank raised interest rates to 5.25%.",
    "我喜欢在周末读书和听音乐。",
    "深度学习模型需要大量的训练数据。",
    "Je voudrais réserver une table pour deux personnes ce soir, vers 20 h.",
    "Der Zug nach München fährt um 14:05 Uhr von Gleis 7 ab.",
    "¿Dónde está el museo más cercano?",
    "Error 404: the page you requested (/docs/v2/index.html) could not be found!!!",
    "#hashtag @user https://example.org/path?q=1&r=2",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10",
    "",
    "Search engines rank documents by relevance; modern ones compare dense vectors computed by neural networks "
    "instead of counting shared words, which lets them match a question with an answer that uses none of its "
    "terms, across languages, spelling mistakes and synonyms, as long as the meaning is close.",
    " ".join(["Attention layers mix information between all the tokens of a sequence."] * 12),
]
