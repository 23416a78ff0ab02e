"""Write the style-transfer sample: data/style/sft.jsonl (40 examples, original text).

The style system rewrites a literary passage in another voice: here, plain
modern prose about a lighthouse keeper -> the same events as a Victorian
keeper's journal. Its real records are 36 training + 4 validation passages,
long enough that ``sequence_len: 4096`` matters; so most examples here join 6
to 24 of 24 paragraphs (prompt + rewrite ~500-1,900 tokens by chars/4: the old
512-token window would drop them, 2048 only just holds the longest; the real
passages run longer), and every 5th is one paragraph, so a 256-token CPU smoke
run still has rows to train and evaluate on. ``axpack prep ... --val-fraction 0.1``
then holds exactly 4 of the 40 out as ``sft.val.jsonl`` (by content hash): 36 + 4.

Every passage is written for this project. Deterministic: rerunning writes the
same bytes. Run: ``python data/make_style_data.py`` (from the repo root).
"""

from __future__ import annotations

import json
from pathlib import Path

# Searched (multiplier 5-23, short slot 0-4, instruction shift 0-2) so that prep's content-hash
# --val-fraction 0.1 split holds out exactly 4 (the recipe's 36 + 4), 2 of them short enough
# for the CPU smoke run's 256-token rows (its eval needs one): the first such setting.
MULT = 13
SHORT = 0
SHIFT = 1
INSTRUCTIONS = [
    "Rewrite this passage as an entry in a Victorian lighthouse keeper's journal. Keep every event.",
    "Rewrite the following as a Victorian keeper's journal entry, keeping every event in order.",
    "Turn this passage into a page of a Victorian lighthouse keeper's journal. Leave no event out.",
]

# (plain modern prose, the same paragraph as the keeper's journal)
PARAGRAPHS = [
    (("The fog came in just after four. By five I couldn't see the end of the jetty, so I started the horn and "
     "wrote the time in the log."),
     ("The fog came upon us a little after four o'clock, and by five the end of the jetty was wholly lost to sight; "
     "whereupon I set the horn sounding and entered the hour in the log, as is my duty.")),
    (("Tobias rowed over with the groceries and a letter from his mother. She wants him home before the winter "
     "storms, and I can't say she's wrong."),
     ("Young Tobias pulled across with our provisions and a letter from his mother, who desires him home before the "
     "winter gales set in; and I confess I cannot find it in me to call her mistaken.")),
    (("The lamp needed a new wick, and the spare box was damp. I dried three wicks by the stove and trimmed the best "
     "of them. It burned clean all night."),
     ("The lamp wanted a fresh wick, and the spare box had taken the damp. I dried three before the stove and "
     "trimmed the best of them with care; it burned clear and steady through the whole of the night.")),
    (("A boat with no lights passed the reef at seven forty-two. It took the north channel like someone who knew the "
     "water. I wrote it down and kept watching."),
     ("At eight-and-twenty minutes before eight a vessel showing no lights passed the reef, taking the north channel "
     "as one who knows these waters well. I set it down in the book and kept my watch upon her.")),
    (("The inspector arrived on the morning ferry. He checked the brass, read the log, and said the company is "
     "thinking about an automatic light."),
     ("The Inspector came over by the morning boat. He examined the brasswork, read through the log, and let fall "
     "that the Company has it in mind to fit an automatic light.")),
    (("I told him a machine can't tell when the bell buoy goes quiet. He wrote that down, which is more than I "
     "expected."),
     ("I made bold to tell him that no machine can know when the bell buoy falls silent. He wrote the remark in his "
     "book, which was more than I had looked for.")),
    (("The wind backed west in the afternoon and the sea got up quickly. Spray reached the gallery rail by dusk, and "
     "the whole tower hummed."),
     ("In the afternoon the wind backed into the west and the sea rose with great suddenness. By dusk the spray was "
     "flung as high as the gallery rail, and the whole tower sang with it.")),
    (("I found a gull with a broken wing on the rocks. I splinted it with a lolly stick and some tape, and it "
     "bit me twice for the trouble."),
     ("Upon the rocks I found a gull with its wing broken. I bound it as best I could with a splint of thin wood and "
     "a strip of linen, and it rewarded my trouble by biting me twice.")),
    (("The supply boat was three days late. We ate the last of the tinned pears and talked about what we'd order "
     "if the company ever paid for cake."),
     ("The supply boat was three days behind her time. We finished the last of the preserved pears and passed the "
     "evening in idle talk of what we should order, were the Company ever to stand us a cake.")),
    (("At midnight the horn stopped. A valve had frozen. I thawed it with a kettle and a lot of swearing, and it "
     "started again at twelve twenty."),
     ("At midnight the horn fell silent, a valve having frozen fast. I thawed it with the kettle and a good deal of "
     "language I shall not record here, and it sounded again at twenty minutes past twelve.")),
    (("Tobias asked why I stay. I said the light doesn't care who keeps it, but the ships do, even if they never "
     "know my name."),
     ("Tobias asked me why I remain. I answered that the light cares nothing for who keeps it, but the ships do, "
     "though they shall never know my name.")),
    (("The morning was clear and cold. I cleaned the lens, polished the brass, and saw three fishing boats head out "
     "past the point before breakfast."),
     ("The morning broke clear and bitter cold. I cleaned the lens and polished the brass, and before I had broken "
     "my fast I saw three fishing boats stand out past the point.")),
    (("A steamer ran close to the Gull Rock in the fog and only turned when she heard the horn. Her captain "
     "waved his cap at the tower as she went by."),
     ("A steamer came perilously near the Gull Rock in the fog and put about only upon hearing our horn. Her master "
     "waved his cap towards the tower as she passed, which I took kindly.")),
    (("I painted the gallery rail. The paint wouldn't dry in the damp, so half of it is on my coat and the other "
     "half is on the gulls."),
     ("I painted the gallery rail, but the paint would not dry in the damp air, so that one half of it now adorns my "
     "coat and the other half the gulls.")),
    (("The barometer fell fast all evening. I brought in the washing, lashed the boat twice, and filled every lamp "
     "before dark."),
     ("The glass fell swiftly the whole evening long. I brought in the washing, made the boat fast with a double "
     "lashing, and filled every lamp before the dark came down.")),
    (("Tobias found an old log book from 1871 in the store room. The keeper then wrote about the same fog, the same "
     "reef, and the same late supply boat."),
     ("Tobias brought to light an old log book of the year 1871 from the store room. The keeper of that day wrote "
     "of the selfsame fog, the selfsame reef, and a supply boat every bit as tardy as our own.")),
    (("A woman on the ferry asked if it's lonely out here. I said it's quiet, which isn't the same thing, and "
     "she laughed as if I'd told a joke."),
     ("A lady upon the ferry enquired whether it be lonely out here. I replied that it is quiet, which is not the same "
     "thing at all, and she laughed as though I had made a jest.")),
    (("The rain turned to sleet after dark. The windows of the lamp room iced over, and I scraped them every hour "
     "so the beam wasn't dimmed."),
     ("After dark the rain turned to sleet. The lamp-room windows iced over, and I scraped them every hour, that the "
     "beam might not be dimmed.")),
    (("The company sent a new clock for the watch room. It gains two minutes a day, so I set it by the old one, "
     "which has never been wrong."),
     ("The Company sent a new clock for the watch room. It gains two minutes in the day, and so I set it by the old "
     "one, which has never once been in error.")),
    (("We heard a ship's bell far out in the fog, ringing the way they do at anchor. By morning she was gone, and "
     "no one on the mainland knew her name."),
     ("Far out in the fog we heard a ship's bell, rung as they are at anchor. By morning she was gone, and no soul on "
     "the mainland could tell her name.")),
    (("Tobias cooked supper for the first time. The fish was burnt on one side and raw on the other, and we ate "
     "every bite."),
     ("Tobias cooked our supper for the first time. The fish was burnt upon one side and raw upon the other, and we "
     "ate every morsel of it.")),
    (("The gale blew itself out before dawn. The beach was covered in kelp and one wooden crate of oranges, which "
     "we did not report."),
     ("The gale blew itself out before dawn. The shore was strewn with kelp and with one wooden crate of oranges, "
     "which we did not think it needful to report.")),
    (("I wrote to the inspector that the light has not failed one night this year. I did not mention the frozen "
     "valve, because the horn is not the light."),
     ("I wrote to the Inspector that the light has not failed upon a single night this year. I made no mention of the "
     "frozen valve, the horn not being the light.")),
    (("At the end of the month Tobias went home on the ferry. The tower was quieter that night, and I kept the log "
     "a little longer than usual."),
     ("At the month's end Tobias went home by the ferry. The tower was the quieter for it that night, and I kept at the "
     "log somewhat longer than is my custom.")),
]


def passage(start: int, length: int, side: int) -> str:
    n = len(PARAGRAPHS)
    return "\n\n".join(PARAGRAPHS[(start + i) % n][side] for i in range(length))


def main() -> None:
    out = Path(__file__).resolve().parent / "style" / "sft.jsonl"
    rows = []
    for k in range(40):
        # every 5th passage is one paragraph (~100-150 tokens: what a 256-token CPU smoke run keeps),
        # the rest 6-24 paragraphs; 40 distinct passages
        start = (k * MULT) % len(PARAGRAPHS)
        length = 1 if k % 5 == SHORT else 6 + (k * 7) % 19
        rows.append({"messages": [
            {"role": "user", "content": f"{INSTRUCTIONS[(k + SHIFT) % 3]}\n\n{passage(start, length, 0)}"},
            {"role": "assistant", "content": passage(start, length, 1)},
        ]})
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} examples to {out}")


if __name__ == "__main__":
    main()
