#!/usr/bin/env python3
"""Write the embedded demo retrieval dataset, data/demo/, in BEIR layout (written by us).

    python3 scripts/make_demo_data.py [--out DIR] [--reduced N]

The corpus is a small knowledge base of English grammar: one document per irregular verb
(base form, past simple, past participle, an example sentence), regular verbs that look like
irregular ones (found/find, fell/fall, lie/lied/lay, hang/hanged, ...) as hard negatives,
noun plurals, irregular comparisons, and spelling and usage rules. Every fact and sentence
below was written for this project: nothing is downloaded or copied from a public dataset.

Queries are made from templates, and the template sets of the two splits are disjoint: test
queries ask about the same documents as train queries, in phrasings training never shows.
Every query has exactly one relevant document (score 1); every document asked about in test
is also asked about in train, and a few documents are asked about in train only.

Files: corpus.jsonl ({"_id", "title", "text"}), queries.jsonl ({"_id", "text"}),
qrels/train.tsv and qrels/test.tsv (header `query-id corpus-id score`), README.md. The output
depends only on this file (fixed seed, fixed order), so rerunning rewrites it byte-identically.

--out DIR    where to write (default: data/demo under the repository root).
--reduced N  keep every document but only every k-th query, so that the copy has N train and
             N // 3 test queries (for quick tests); needs an explicit --out. In a reduced copy
             a test query's document may have no train query left.
"""
import argparse
import json
import pathlib
import random
import re
import shutil
import string
import sys

SEED = 20240611
ROOT = pathlib.Path(__file__).resolve().parent.parent
OUTPUT_FILES = {"corpus.jsonl", "queries.jsonl", "qrels", "README.md"}

# key past participle | example using a past form. "a/b" lists accepted variants; a key
# "base-sense" marks one sense of a verb whose base form has several (lie, hang, ...).
IRREGULAR_VERBS = """\
arise arose arisen | A serious problem arose during the night.
awake awoke awoken | I awoke before sunrise.
be was/were been | We were tired after the long trip.
bear bore borne | She has borne the pain bravely.
beat beat beaten | Our team was beaten in the final.
become became become | He became a teacher at twenty.
begin began begun | The concert began at eight.
bend bent bent | He bent down to tie his shoe.
bet bet bet | I bet ten pounds on the grey horse.
bid bid bid | She bid fifty dollars for the lamp.
bind bound bound | The old books were bound in leather.
bite bit bitten | The dog has bitten the postman.
bleed bled bled | His knee bled after the fall.
blow blew blown | The wind blew all night.
break broke broken | She broke a glass in the kitchen.
breed bred bred | They bred horses on the farm.
bring brought brought | He brought flowers to the party.
broadcast broadcast broadcast | The match was broadcast live.
build built built | They built a house by the lake.
burn burned/burnt burned/burnt | The toast burnt while I was on the phone.
burst burst burst | The balloon burst with a loud bang.
buy bought bought | Yesterday I bought a warm coat.
cast cast cast | The director cast her in the lead role.
catch caught caught | He caught the last bus home.
choose chose chosen | She chose the red dress.
cling clung clung | The child clung to her mother.
come came come | They came home late.
cost cost cost | The tickets cost twenty euros.
creep crept crept | The cat crept towards the bird.
cut cut cut | I cut my finger on the knife.
deal dealt dealt | She dealt the cards.
dig dug dug | The children dug a hole in the sand.
dive dived/dove dived | He dived into the cold pool.
do did done | Have you done your homework?
draw drew drawn | She drew a map of the village.
dream dreamed/dreamt dreamed/dreamt | I dreamt about the sea last night.
drink drank drunk | He drank a glass of water.
drive drove driven | We drove to the coast.
eat ate eaten | Have you eaten breakfast?
fall fell fallen | The leaves fell from the trees.
feed fed fed | She fed the ducks at the pond.
feel felt felt | I felt tired after work.
fight fought fought | The two brothers fought over the toy.
find found found | I found my keys under the sofa.
flee fled fled | The family fled the burning building.
fling flung flung | He flung the door open.
fly flew flown | We flew to Lisbon last spring.
forbid forbade forbidden | Smoking is forbidden in the station.
forecast forecast forecast | Rain was forecast for the weekend.
forget forgot forgotten | I have forgotten her name.
forgive forgave forgiven | She forgave him in the end.
forsake forsook forsaken | He forsook his old friends.
freeze froze frozen | The lake froze in January.
get got got/gotten | She got a letter from the bank.
give gave given | He gave me a book.
go went gone | She has gone home.
grind ground ground | He ground the coffee beans.
grow grew grown | The tomatoes grew quickly.
hang-suspend hung hung | We hung the picture above the fireplace.
have had had | We had a great time.
hear heard heard | I heard a noise outside.
hide hid hidden | The key was hidden under a stone.
hit hit hit | The ball hit the window.
hold held held | She held the baby gently.
hurt hurt hurt | I hurt my back lifting boxes.
keep kept kept | He kept the receipt.
kneel knelt/kneeled knelt/kneeled | She knelt beside the bed.
know knew known | I have known him for years.
lay laid laid | She laid the plates on the table.
lead led led | The guide led us through the forest.
lean leaned/leant leaned/leant | He leaned against the wall.
leap leaped/leapt leaped/leapt | The cat leapt onto the fence.
learn learned/learnt learned/learnt | I learnt to swim as a child.
leave left left | They left early.
lend lent lent | She lent me her umbrella.
let let let | My parents let me stay up late.
lie-recline lay lain | She lay on the sofa all afternoon.
light lit/lighted lit/lighted | He lit a candle.
lose lost lost | I lost my wallet on the train.
make made made | She made a cake for his birthday.
mean meant meant | I meant to call you.
meet met met | We met at university.
mistake mistook mistaken | He mistook me for my brother.
mow mowed mown/mowed | The grass has been mown.
overcome overcame overcome | She overcame her fear of flying.
pay paid paid | I paid the bill.
put put put | He put the milk in the fridge.
quit quit quit | She quit her job last year.
read read read | I read the whole book in a day.
ride rode ridden | He rode his bike to school.
ring-bell rang rung | The phone rang twice.
rise rose risen | The sun rose at six.
run ran run | She ran to the station.
say said said | He said nothing.
see saw seen | I saw a fox in the garden.
seek sought sought | They sought advice from a lawyer.
sell sold sold | We sold our old car.
send sent sent | I sent her an email.
set set set | She set the alarm for six.
sew sewed sewn/sewed | She has sewn a button on the coat.
shake shook shaken | He shook my hand.
shed shed shed | The tree shed its leaves.
shine-glow shone shone | The sun shone all day.
shoot shot shot | He shot the ball into the net.
show showed shown | She has shown me her photos.
shrink shrank shrunk | My sweater shrank in the wash.
shut shut shut | He shut the door quietly.
sing sang sung | They sang a song together.
sink sank sunk | The ship sank in the storm.
sit sat sat | We sat by the window.
slay slew slain | The knight slew the dragon.
sleep slept slept | I slept for ten hours.
slide slid slid | The child slid down the hill.
smell smelled/smelt smelled/smelt | The kitchen smelt of fresh bread.
sow sowed sown/sowed | The farmer has sown the wheat.
speak spoke spoken | She spoke to the manager.
speed sped/speeded sped/speeded | The car sped down the road.
spell spelled/spelt spelled/spelt | He spelt my name wrong.
spend spent spent | We spent the weekend in the mountains.
spill spilled/spilt spilled/spilt | I spilt coffee on my shirt.
spin spun spun | The wheel spun faster and faster.
spit spat/spit spat/spit | The baby spat out the food.
split split split | They split the bill.
spoil spoiled/spoilt spoiled/spoilt | The rain spoilt our picnic.
spread spread spread | She spread butter on the toast.
spring sprang sprung | The cat sprang onto the table.
stand stood stood | We stood in the queue for an hour.
steal stole stolen | Someone stole my bike.
stick stuck stuck | The stamp stuck to my finger.
sting stung stung | A bee stung me on the arm.
stink stank stunk | The fish stank after two days.
stride strode stridden | He strode into the room.
strike struck struck | Lightning struck the tower.
string strung strung | They strung lights across the street.
strive strove/strived striven/strived | She strove to do her best.
swear swore sworn | He swore to tell the truth.
sweep swept swept | She swept the floor.
swell swelled swollen/swelled | His ankle has swollen.
swim swam swum | We swam in the lake.
swing swung swung | The gate swung open.
take took taken | He took the bus to work.
teach taught taught | She taught French for ten years.
tear tore torn | He tore his jacket on a nail.
tell told told | She told me a secret.
think thought thought | I thought about you yesterday.
throw threw thrown | He threw the ball to his dog.
thrust thrust thrust | She thrust the letter into my hand.
tread trod trodden | He trod on my foot.
understand understood understood | I understood the question.
undertake undertook undertaken | They undertook a long journey.
upset upset upset | The news upset her.
wake woke woken | I woke at seven.
wear wore worn | She wore a blue dress.
weave-cloth wove woven | She wove a basket from reeds.
weep wept wept | He wept at the news.
win won won | Our team won the cup.
wind-turn wound wound | He wound the clock every Sunday.
withdraw withdrew withdrawn | She withdrew some cash.
wring wrung wrung | He wrung out the wet towel.
write wrote written | She wrote a letter to her aunt.
"""

# Regular verbs that look like irregular forms or share a base form with one.
REGULAR_VERBS = """\
lie-untruth lied lied | He lied about his age.
hang-execute hanged hanged | The prisoner was hanged in 1850.
shine-polish shined shined | He shined his shoes before the interview.
ring-encircle ringed ringed | Police ringed the building.
weave-zigzag weaved weaved | The cyclist weaved through the traffic.
raise raised raised | She raised her hand.
fell felled felled | They felled the old oak tree.
found founded founded | The company was founded in 1998.
wound wounded wounded | The soldier was wounded in the leg.
ground grounded grounded | All flights were grounded by the fog.
saw sawed sawn/sawed | He sawed the plank in half.
bore bored bored | The long lecture bored everyone.
flow flowed flowed | The river flowed past the town.
"""

GLOSS = {
    "lie-recline": "to recline or lie down", "lie-untruth": "to tell an untruth",
    "hang-suspend": "to suspend or attach", "hang-execute": "to execute by hanging",
    "shine-glow": "to give out light", "shine-polish": "to polish",
    "ring-bell": "to sound a bell or phone", "ring-encircle": "to surround",
    "weave-cloth": "to make cloth or baskets", "weave-zigzag": "to move in and out",
    "wind-turn": "to turn or coil", "lay": "to put something down", "raise": "to lift",
    "fell": "to cut down a tree", "found": "to establish", "wound": "to injure",
    "ground": "to keep on the ground", "saw": "to cut with a saw",
    "bore": "to make someone weary", "flow": "to move like a liquid",
}

VERB_NOTES = {
    "be": "Was goes with I, he, she and it; were with you, we and they.",
    "bear": "For birth, the passive uses born: he was born in 1990.",
    "burn": "Burnt is common in British English, burned in American English.",
    "dive": "Dove is common in American English.",
    "get": "Gotten is the usual past participle in American English.",
    "lay": "Lay takes an object: you lay something down. Compare lie (to recline): lay, lain.",
    "lie-recline": "Do not confuse with lie (to tell an untruth), which is regular: lied.",
    "lie-untruth": "The -ing form is lying. Compare lie (to recline): lay, lain.",
    "hang-suspend": "For executions the regular form hanged is used.",
    "hang-execute": "For pictures, coats and other objects use hung.",
    "read": "The past forms are spelled like the base form but pronounced like red.",
    "rise": "Rise takes no object; compare raise, which is regular.",
    "raise": "Raise takes an object; compare rise, rose, risen.",
    "sit": "Sit takes no object; compare set, which does.",
    "set": "Set takes an object: you set something somewhere. Compare sit.",
    "fall": "Do not confuse with fell (to cut down a tree), which is regular: felled.",
    "fell": "Fell is also the past simple of fall, a different verb.",
    "find": "Do not confuse with found (to establish), which is regular: founded.",
    "found": "Found is also the past of find, a different verb.",
    "wind-turn": "Do not confuse with wound (to injure), which is regular: wounded.",
    "wound": "Wound is also the past of wind (to turn).",
    "grind": "Do not confuse with ground (to keep on the ground), which is regular.",
    "ground": "Ground is also the past of grind.",
    "saw": "Saw is also the past simple of see, a different verb.",
    "bore": "Bore is also the past simple of bear, a different verb.",
    "flow": "Do not confuse with fly: flew, flown.",
    "fly": "Do not confuse with flow: flowed.",
    "shine-glow": "When shine means to polish, it is regular: shined.",
    "ring-bell": "When ring means to surround, it is regular: ringed.",
    "weave-cloth": "When weave means to move in and out, it is regular: weaved.",
    "quit": "Quitted is sometimes used in British English.",
    "spit": "Spit is also used as the past form in American English.",
    "wake": "The regular form waked is rare. The verb awake (awoke, awoken) is similar.",
    "sew": "Do not confuse with sow (to plant seeds): sowed, sown.",
    "sow": "Do not confuse with sew (to stitch): sewed, sewn.",
}

# singular plural | note
NOUNS = """\
child children | The old plural ending -ren is added.
mouse mice | The vowel changes; computer mice are usually called mice too.
louse lice | The vowel changes, as in mouse and mice.
foot feet | The vowel changes, as in tooth and teeth.
tooth teeth | The vowel changes, as in foot and feet.
goose geese | The vowel changes; but mongoose takes mongooses.
mongoose mongooses | It is regular, unlike goose and geese.
man men | The vowel changes; compounds follow it: policeman, policemen.
woman women | The first vowel of women is pronounced like the i in win.
person people | Persons is used in formal and legal language.
ox oxen | The old plural ending -en is kept.
sheep sheep | The plural is the same as the singular: one sheep, ten sheep.
fish fish | Fishes is used for several kinds of fish.
deer deer | The plural is the same as the singular.
moose moose | The plural is the same as the singular.
series series | The plural is the same as the singular.
species species | The plural is the same as the singular.
aircraft aircraft | The plural is the same as the singular.
cactus cacti/cactuses | The Latin -us becomes -i.
fungus fungi/funguses | The Latin -us becomes -i.
nucleus nuclei | The Latin -us becomes -i.
radius radii | The Latin -us becomes -i.
stimulus stimuli | The Latin -us becomes -i.
analysis analyses | The Greek -is becomes -es.
crisis crises | The Greek -is becomes -es.
thesis theses | The Greek -is becomes -es.
hypothesis hypotheses | The Greek -is becomes -es.
basis bases | The Greek -is becomes -es.
diagnosis diagnoses | The Greek -is becomes -es.
phenomenon phenomena | The Greek -on becomes -a.
criterion criteria | The Greek -on becomes -a; criteria is not singular.
datum data | Data is often used as an uncountable noun: the data is ready.
medium media/mediums | Mediums is used for people who claim to contact spirits.
bacterium bacteria | The Latin -um becomes -a.
curriculum curricula/curriculums | The Latin -um becomes -a.
appendix appendices/appendixes | Appendixes is usual for the body part.
index indices/indexes | Indexes is usual for books, indices in mathematics.
matrix matrices | The Latin -ix becomes -ices.
vertex vertices | The Latin -ex becomes -ices.
formula formulae/formulas | Formulas is usual in everyday English.
antenna antennae/antennas | Antennae for insects, antennas for radios.
larva larvae | The Latin -a becomes -ae.
alga algae | The Latin -a becomes -ae.
die dice | Dice is also widely used as the singular.
penny pennies/pence | Pence for amounts of money, pennies for the coins.
knife knives | The -fe becomes -ves.
wife wives | The -fe becomes -ves.
leaf leaves | The -f becomes -ves.
wolf wolves | The -f becomes -ves.
half halves | The -f becomes -ves.
loaf loaves | The -f becomes -ves.
shelf shelves | The -f becomes -ves.
thief thieves | The -f becomes -ves.
roof roofs | It keeps the f and adds -s, unlike leaf and leaves.
chief chiefs | It keeps the f and adds -s, unlike thief and thieves.
belief beliefs | It keeps the f and adds -s; believes is a verb form.
cliff cliffs | Nouns in -ff add -s.
potato potatoes | It adds -es after the -o.
tomato tomatoes | It adds -es after the -o.
hero heroes | It adds -es after the -o.
echo echoes | It adds -es after the -o.
photo photos | Short forms in -o add only -s.
piano pianos | Words from Italian in -o usually add only -s.
passer-by passers-by | The main noun takes the plural.
mother-in-law mothers-in-law | The main noun takes the plural.
"""

# kind base comparative superlative | note
COMPARISONS = """\
adj good better best | Good is irregular; the adverb well has the same forms.
adv well better best | The adverb well shares its forms with the adjective good.
adj bad worse worst | Bad is irregular; the adverb badly has the same forms.
adv badly worse worst | The adverb badly shares its forms with the adjective bad.
adj far farther/further farthest/furthest | Further also means additional: further details.
adj little less least | For size, smaller and smallest are usual: a smaller box.
adj many more most | Many goes with countable nouns: many books, more books.
adj much more most | Much goes with uncountable nouns: much water, more water.
adj few fewer fewest | Use fewer with countable nouns and less with uncountable ones.
adj old older/elder oldest/eldest | Elder and eldest are used for family: my elder sister.
adj late later/latter latest/last | Later and latest refer to time; latter and last to order.
adj big bigger biggest | The final consonant doubles after a single short vowel.
adj happy happier happiest | The -y becomes -i before -er and -est.
adj beautiful more_beautiful most_beautiful | Long adjectives use more and most.
adj simple simpler simplest | Adjectives in -le usually take -er and -est.
adj clever cleverer/more_clever cleverest/most_clever | Both patterns are correct.
adj fun more_fun most_fun | Funner and funnest are informal.
"""

# (id, title, "kind: example words" or "", text, train questions, test questions); the
# example words are asked about with the query templates of their kind.
RULES = [
    ("past-ed", "Regular past tense: -ed", "past: walk jump open listen happen wash help ask",
     "Most regular verbs form both the past simple and the past participle by adding -ed: walk, walked; open, opened. Irregular verbs have to be learned one by one.",
     "how do regular verbs form the past tense|what ending do regular verbs take in the past simple",
     "standard way to put an English verb into the past"),
    ("past-e", "Past tense of verbs ending in -e", "past: love hope smile dance arrive agree",
     "Verbs ending in a silent -e add only -d: love, loved; hope, hoped; arrive, arrived. Verbs ending in -ee also add -d: agree, agreed.",
     "verbs ending in e: do you add -ed or -d|past tense spelling for verbs that end in a silent e",
     "why is it hoped and not hopeed"),
    ("past-y", "Past tense of verbs ending in -y", "past: carry study try worry cry play enjoy stay",
     "After a consonant, -y becomes -ied: carry, carried; study, studied; try, tried. After a vowel, -y stays: play, played; enjoy, enjoyed. Exceptions: pay, paid; say, said; lay, laid.",
     "when does y change to i before -ed|past tense of verbs ending in a consonant plus y",
     "why studied but played"),
    ("double-consonant", "Doubling the final consonant before -ed", "past: stop plan drop prefer admit chat rob occur regret",
     "When a verb ends in one vowel plus one consonant and the last syllable is stressed, double the consonant: stop, stopped; plan, planned; prefer, preferred. Do not double when the stress is earlier (visit, visited), and never double w, x or y.",
     "when do you double the final consonant before -ed|why does stop become stopped with two p",
     "one consonant or two when adding -ed"),
    ("british-l", "Final -l: travelled or traveled", "past: travel cancel label model signal",
     "British English doubles a final -l after one vowel before -ed and -ing, even without stress: travel, travelled, travelling. American English usually keeps one l: traveled, traveling.",
     "travelled or traveled: which is correct|British and American spelling of cancelled",
     "why do Americans write one l in traveling"),
    ("ed-pronunciation", "Pronouncing the -ed ending", "",
     "The -ed ending has three sounds: an extra syllable /ɪd/ after t and d (wanted, needed), /t/ after voiceless sounds such as p, k, s, sh and ch (stopped, asked, washed), and /d/ after other sounds (played, opened).",
     "how do you pronounce the -ed ending|when is -ed pronounced as an extra syllable|is the ed in asked pronounced t or d",
     "three sounds of the past tense ending|pronunciation of wanted compared with walked"),
    ("third-person-s", "Third person singular -s", "third: work watch fix push miss try study buzz",
     "In the present simple, he, she and it take -s: she works. Add -es after s, sh, ch, x, z and o (watches, fixes, goes), change consonant + y to -ies (tries), and note the irregular has and does.",
     "when do you add -es to a verb in the present simple|why is it she watches and not she watchs",
     "present simple verb ending after he, she or it"),
    ("gerund-e", "-ing form of verbs ending in -e", "ing: smile hope dance move live change agree",
     "Drop a silent -e before -ing: smile, smiling; move, moving. Keep it after -ee, -ye and -oe (agree, agreeing; dye, dyeing; canoe, canoeing) and in be, being.",
     "do you drop the e before -ing|spelling of the -ing form when a verb ends in e",
     "is it makeing or making"),
    ("gerund-ie", "-ing form of verbs ending in -ie", "ing: tie vie untie",
     "Verbs ending in -ie change -ie to -y before -ing: die, dying; tie, tying; lie, lying. Their past forms are regular: died, tied.",
     "how do you spell the -ing form of verbs ending in ie|why dying and not dieing",
     "ie becomes y before ing?"),
    ("gerund-double", "Doubling the final consonant before -ing", "ing: stop plan jog shop chat prefer",
     "The doubling rule for -ed also applies to -ing: stop, stopping; run, running; begin, beginning; swim, swimming. There is no doubling after two vowels or two consonants: rain, raining; help, helping.",
     "when do you double the consonant before -ing|why is running spelled with two n",
     "swiming or swimming: which spelling"),
    ("plural-s", "Regular plurals: -s", "plural: book car tree girl pen cat",
     "Most nouns form the plural by adding -s: book, books; car, cars; tree, trees. The ending is pronounced /s/, /z/ or /ɪz/ depending on the last sound.",
     "how do most English nouns form the plural|regular plural ending in English",
     "basic rule for making a noun plural"),
    ("plural-es", "Plurals in -es", "plural: box church bus dish glass fox brush quiz",
     "Nouns ending in s, ss, sh, ch, x or z add -es: bus, buses; glass, glasses; dish, dishes; church, churches; box, boxes; quiz, quizzes.",
     "when do you add -es instead of -s to a noun|plural of nouns ending in ch or sh",
     "why boxes and not boxs"),
    ("plural-ies", "Plurals of nouns ending in -y", "plural: city baby story party lady day boy key",
     "After a consonant, -y becomes -ies: city, cities; baby, babies; story, stories. After a vowel, just add -s: day, days; boy, boys; key, keys.",
     "plural of nouns ending in y|when does y change to ies in the plural",
     "why cities but days"),
    ("plural-ves", "Plurals of nouns ending in -f or -fe", "plural: scarf calf elf self hoof safe",
     "Some nouns ending in -f or -fe change to -ves: knife, knives; leaf, leaves; wolf, wolves. Many others just add -s: roof, roofs; chief, chiefs; safe, safes. A few allow both: scarf, scarfs or scarves.",
     "which nouns ending in f change to ves|rule for plurals of words ending in -fe",
     "f to v in the plural: when"),
    ("plural-o", "Plurals of nouns ending in -o", "plural: volcano mosquito radio zoo kilo video",
     "Some nouns ending in -o add -es: potato, potatoes; hero, heroes; echo, echoes. Others, especially short forms and words from Italian, add -s: photo, photos; piano, pianos. Some take either: volcanoes or volcanos.",
     "nouns ending in o: add s or es|why potatoes but photos",
     "o-ending nouns and their plural spelling"),
    ("plural-compound", "Plurals of compound nouns", "plural: son-in-law runner-up brother-in-law daughter-in-law",
     "In compound nouns the main noun usually takes the plural: passer-by, passers-by; runner-up, runners-up. Compounds written as one word add -s at the end: toothbrush, toothbrushes.",
     "how do you make a compound noun plural|where does the s go in a hyphenated noun",
     "plural of hyphenated nouns like sister-in-law"),
    ("plural-unchanged", "Nouns with the same singular and plural", "plural: salmon trout bison swine cod",
     "Some nouns, many of them animals, have the same form in the singular and the plural: sheep, deer, fish, salmon, aircraft, series, species. One sheep, two sheep.",
     "nouns that do not change in the plural|which animals have the same plural as singular",
     "zero plural nouns in English"),
    ("plural-latin-greek", "Plurals of Latin and Greek nouns", "plural: syllabus oasis axis emphasis millennium symposium",
     "Many nouns from Latin and Greek keep their original plurals: -us becomes -i (cactus, cacti), -is becomes -es (crisis, crises), -on becomes -a (criterion, criteria), -um becomes -a (bacterium, bacteria). English plurals in -s are often accepted too.",
     "plural rules for words from Latin|us to i plural rule",
     "classical plurals: -is to -es and -on to -a"),
    ("comparative-er", "Comparatives of short adjectives: -er and -est", "comparative: tall fast small cheap young long large nice",
     "One-syllable adjectives add -er for the comparative and -est for the superlative: tall, taller, tallest; fast, faster, fastest. If the adjective ends in -e, add only -r and -st: large, larger, largest.",
     "how do you form the comparative of a one-syllable adjective|when do you use -er and -est",
     "short adjectives: comparative ending"),
    ("comparative-more", "Comparatives with more and most", "comparative: careful expensive interesting modern famous difficult",
     "Adjectives of two or more syllables, except many ending in -y, use more and most: careful, more careful, most careful; expensive, more expensive. Some two-syllable adjectives allow both: narrow, quiet.",
     "when do you use more instead of -er|comparative of long adjectives",
     "more + adjective or adjective + er: how to choose"),
    ("comparative-y", "Comparatives of adjectives ending in -y", "comparative: easy busy pretty funny early heavy",
     "Adjectives ending in a consonant + y change y to i and add -er or -est: easy, easier, easiest; busy, busier, busiest; funny, funnier, funniest.",
     "comparative of adjectives ending in y|why easier and not more easy",
     "y to i before -er and -est"),
    ("comparative-double", "Doubling before -er and -est", "comparative: hot thin fat wet sad red",
     "One-syllable adjectives ending in one vowel plus one consonant double the consonant: hot, hotter, hottest; thin, thinner, thinnest. There is no doubling after w: slow, slower.",
     "when do you double the consonant in comparatives|why is hotter spelled with two t",
     "double letter before -est in superlatives"),
    ("present-perfect", "Present perfect", "",
     "The present perfect is have or has plus the past participle: I have eaten, she has gone, they have written. It links a past action with the present.",
     "how do you form the present perfect|which verb form follows has or have|structure of the present perfect tense",
     "have + third form: what tense is it"),
    ("past-perfect", "Past perfect", "",
     "The past perfect is had plus the past participle: she had left, we had eaten. It shows an action that happened before another past action.",
     "how do you form the past perfect|when do you use had plus a past participle",
     "tense for an action before another past event"),
    ("passive", "The passive voice", "",
     "The passive is a form of be plus the past participle: the letter was written, the house has been sold. The agent can be added with by.",
     "how do you form the passive voice|which participle is used in the passive",
     "was written, is made: what structure is this"),
    ("past-simple-vs-perfect", "Past simple or present perfect", "",
     "Use the past simple for finished actions at a stated past time: I saw her yesterday. Use the present perfect when no finished time is given or the result matters now: I have seen that film.",
     "difference between past simple and present perfect|can you say I have seen him yesterday",
     "yesterday with the present perfect: allowed?"),
    ("been-gone", "been or gone", "",
     "Gone means someone went and is still away: she has gone to Paris. Been, the participle of be, is used for a completed visit: she has been to Paris twice.",
     "has been or has gone: what is the difference|she has been to Paris or she has gone to Paris",
     "is she still there if she has gone"),
    ("identical-forms", "Verbs with three identical forms", "",
     "Some irregular verbs keep one form for the base, the past simple and the past participle: cut, put, set, hit, let, shut, cost, hurt, quit, spread, bet, burst.",
     "which verbs have the same form in past and present|verbs like cut and put that never change",
     "irregular verbs whose three forms are identical"),
    ("vowel-change", "Irregular verbs with the vowels i, a, u", "",
     "A group of irregular verbs changes the vowel from i to a to u: sing, sang, sung; ring, rang, rung; drink, drank, drunk; swim, swam, swum; begin, began, begun.",
     "verbs that go i a u like sing sang sung|irregular verb pattern drink drank drunk",
     "the i-a-u vowel pattern in irregular verbs"),
    ("ed-ing-adjectives", "-ed and -ing adjectives", "",
     "Adjectives in -ed describe how someone feels: I am bored, interested, tired. Adjectives in -ing describe what causes the feeling: the film is boring, interesting, tiring.",
     "bored or boring: which describes a feeling|difference between interested and interesting",
     "-ed vs -ing adjectives"),
]

# Hand-written questions about look-alike verbs: (split, text, document id).
CONFUSABLES = [
    ("train", "is it lay or lie when you recline", "verb-lie-recline"),
    ("train", "he ___ about his age (lie): lay or lied?", "verb-lie-untruth"),
    ("train", "past of lay, as in lay the table", "verb-lay"),
    ("train", "rise or raise: which one takes an object", "verb-raise"),
    ("train", "the sun rose or the sun raised?", "verb-rise"),
    ("train", "sit or set: which one needs an object", "verb-set"),
    ("train", "they felled the tree: which verb is felled from", "verb-fell"),
    ("train", "founded or found: past of the verb meaning establish", "verb-found"),
    ("train", "pictures are hung, but criminals were ___", "verb-hang-execute"),
    ("train", "woke or waked: past of wake", "verb-wake"),
    ("train", "flown or flowed: the river has ___ over its banks", "verb-flow"),
    ("train", "sawn or seen: he has ___ the log in half", "verb-saw"),
    ("test", "lie down yesterday: lay or laid?", "verb-lie-recline"),
    ("test", "told a lie yesterday: which past form of lie", "verb-lie-untruth"),
    ("test", "lay or lie: the one that takes an object, past laid", "verb-lay"),
    ("test", "prices have risen or raised", "verb-rise"),
    ("test", "she ___ at the table all evening: sat or set?", "verb-sit"),
    ("test", "he ___ up the clock every night: wound or winded", "verb-wind-turn"),
    ("test", "he has fallen or felled from the ladder", "verb-fall"),
    ("test", "gave birth: born or borne", "verb-bear"),
]

# Query templates per kind: (train, test), disjoint. A template is used for a document only
# when the document has every field it names (reverse questions need an unambiguous form).
TEMPLATES = {
    "verb": ([
        "what is the simple past of {v}", "past tense of {v}", "past participle of {v}?",
        "what is the third form of {v}", "{v} conjugation: past simple and past participle",
        "yesterday I ___ ({vb}): which form?", "has she ___ ({vb}) yet?",
        "'{past_u}' is the past tense of which verb?", "fill in the gap: {gap}",
        "is {v} regular or irregular", "is '{wrong}' correct English?",
        "how do you conjugate {v} in the past",
    ], [
        "which form of {v} do I use after had", "they had already ___ ({vb}) when I arrived",
        "last summer we ___ ({vb}). correct verb form?", "V2 and V3 of {v}",
        "what verb is '{pp_u}' the participle of", "'{wrong}' or something else: past of {v}",
        "principal parts of the verb {v}", "participle needed for the passive of {v}",
    ]),
    "noun": ([
        "plural of {n}", "what is the plural of {n}?", "one {n}, two ...?",
        "singular of '{pl_u}'", "how do you make {n} plural", "is the plural of {n} regular?",
    ], [
        "more than one {n}: what is the word", "'{pl_u}' is the plural of what",
        "correct plural form for the word {n}", "three ___ ({n}): which word fills the gap?",
    ]),
    "comparison": ([
        "comparative of {a}", "superlative of {a}",
        "what are the comparative and superlative forms of {a}",
        "{a}, ___, ___: degrees of comparison", "does {a} take -er or more?",
        "'{cmp_u}' is the comparative of which word?",
    ], [
        "the ___ ({a}) of all: superlative form?", "compare using {a}: which forms are correct",
        "{a} in the superlative", "'{sup_u}' is the superlative of which word?",
    ]),
    "third": (["he/she/it form of {w}", "how do you spell {w} after he or she"],
              ["third person singular present of {w}"]),
    "ing": (["how do you spell the -ing form of {w}", "present participle spelling of {w}"],
            ["{w} + ing: correct spelling?"]),
}
WORD_FIELDS = ("v", "vb", "n", "a", "w")  # a rule's example word fills any of these
RULE_WORD_KIND = {"past": "verb", "plural": "noun", "comparative": "comparison",
                  "third": "third", "ing": "ing"}
TRAIN_PER_DOC = {"verb": 4, "noun": 4, "comparison": 5}
TRAIN_PER_RULE_WORDS, SECOND_TEST_QUERY_P, TRAIN_ONLY_DOCS = 3, 0.25, 12


def variants(form: str) -> list:
    return [v.replace("_", " ") for v in form.split("/")]


def either(form: str) -> str:
    return " or ".join(variants(form))


def parse_table(table: str) -> list:
    """Lines `a b c | note` -> ([a, b, c], note)."""
    rows = []
    for line in table.splitlines():
        head, note = line.split(" | ")
        rows.append((head.split(), note))
    return rows


# Bases whose regularised past is a real word or an accepted variant (bed, putted, betted).
REAL_REGULARS = {"be", "see", "put", "wind", "lead", "cost", "broadcast", "forecast", "quit",
                 "spit", "bet", "wake", "string", "pay", "dig", "cast", "slay", "tread", "thrust"}


def naive_past(base: str) -> str:
    """The regularised past a learner might write for an irregular verb (runned, writed)."""
    if base.endswith("e"):
        return base + "d"
    if re.fullmatch(r"[^aeiou]*[aeiou][^aeiouwxy]", base):
        return base + base[-1] + "ed"
    return base + "ed"


def build_documents():
    """All documents, each with the fields its query templates may use."""
    docs = []  # (kind, doc, fields, forms)
    for table, regular in [(IRREGULAR_VERBS, False), (REGULAR_VERBS, True)]:
        for (key, past, pp), example in parse_table(table):
            base = key.split("-")[0]
            gloss = GLOSS.get(key)
            kind = "regular" if regular else "irregular"
            meaning = f", meaning {gloss}," if gloss else ""
            text = (f"The verb {base}{meaning} is {kind}. Past simple: {either(past)}. "
                    f"Past participle: {either(pp)}. Example: {example}")
            if key in VERB_NOTES:
                text += " " + VERB_NOTES[key]
            title = f"{base}: {gloss} ({kind} verb)" if "-" in key else f"{base} ({kind} verb)"
            used = [f for f in variants(past) + variants(pp) if re.search(rf"\b{f}\b", example)]
            assert used, f"example for {key} uses no past form"
            fields = {"base": base, "example": example, "form": used[0], "regular": regular,
                      "past1": variants(past)[0], "pp1": variants(pp)[0]}
            docs.append(("verb", {"_id": f"verb-{key}", "title": title, "text": text}, fields,
                         [base] + variants(past) + variants(pp)))
    for (singular, plural), note in parse_table(NOUNS):
        irregular = not {singular + "s", singular + "es"} >= set(variants(plural))
        title = f"{singular} ({'irregular ' if irregular else ''}plural)"
        text = f"The plural of {singular} is {either(plural)}. {note}"
        docs.append(("noun", {"_id": f"noun-{singular}", "title": title, "text": text},
                     {"n": singular, "pl1": variants(plural)[0]}, [singular] + variants(plural)))
    for (kind, base, cmp, sup), note in parse_table(COMPARISONS):
        word = "adverb" if kind == "adv" else "adjective"
        text = (f"The {word} {base} has the comparative {either(cmp)} and the superlative "
                f"{either(sup)}. {note}")
        docs.append(("comparison", {"_id": f"{kind}-{base}", "title": f"{base} (comparison)",
                                    "text": text},
                     {"a": base, "cmp1": variants(cmp)[0], "sup1": variants(sup)[0]},
                     [base] + variants(cmp) + variants(sup)))
    for rule_id, title, _, text, _, _ in RULES:
        docs.append(("rule", {"_id": f"rule-{rule_id}", "title": title, "text": text}, {}, []))
    return docs


def add_query_fields(docs) -> None:
    """Fields that depend on the whole corpus: forms that name one document only."""
    owners = {}
    for _, doc, _, forms in docs:
        for form in forms:
            owners.setdefault(form, set()).add(doc["_id"])
    bases = {}
    for kind, doc, fields, _ in docs:
        if kind == "verb":
            bases.setdefault(fields["base"], []).append(doc["_id"])

    def unique(form, doc):
        return owners[form] == {doc["_id"]}

    for kind, doc, f, _ in docs:
        if kind == "verb":
            key = doc["_id"][len("verb-"):]
            shared = len(bases[f["base"]]) > 1
            f["v"] = f"{f['base']} ({GLOSS[key]})" if shared else f["base"]
            f["vb"] = f"{f['base']}: {GLOSS[key]}" if shared else f["base"]
            f["gap"] = re.sub(rf"\b{f['form']}\b", f"___ ({f['vb']})", f["example"], count=1)
            wrong = naive_past(f["base"])
            if not (f["regular"] or shared or wrong in owners or f["base"] in REAL_REGULARS):
                f["wrong"] = wrong
            for name in ("past", "pp"):
                if unique(f[name + "1"], doc) and f[name + "1"] != f["base"]:
                    f[name + "_u"] = f[name + "1"]
        elif kind == "noun" and unique(f["pl1"], doc) and f["pl1"] != f["n"]:
            f["pl_u"] = f["pl1"]
        elif kind == "comparison":
            for name in ("cmp", "sup"):
                if unique(f[name + "1"], doc) and " " not in f[name + "1"]:
                    f[name + "_u"] = f[name + "1"]


def usable(templates, fields) -> list:
    return [t for t in templates
            if all(name in fields for _, name, _, _ in string.Formatter().parse(t) if name)]


def build_queries(docs, rng):
    """(train, test): lists of (text, doc id)."""
    train, test = [], []
    entities = {form for _, _, _, forms in docs for form in forms}
    asked_in_test = {doc_id for split, _, doc_id in CONFUSABLES if split == "test"}
    candidates = sorted(d["_id"] for kind, d, _, _ in docs
                        if kind != "rule" and d["_id"] not in asked_in_test)
    train_only = set(rng.sample(candidates, TRAIN_ONLY_DOCS))

    def ask(kind, fields, doc_id, k_train, k_test):
        train_t, test_t = (usable(t, fields) for t in TEMPLATES[kind])
        for t in rng.sample(train_t, min(k_train, len(train_t))):
            train.append((t.format(**fields), doc_id))
        for t in rng.sample(test_t, min(k_test, len(test_t))):
            test.append((t.format(**fields), doc_id))

    for kind, doc, fields, _ in docs:
        if kind != "rule":
            k_test = 0 if doc["_id"] in train_only else (
                2 if rng.random() < SECOND_TEST_QUERY_P else 1)
            ask(kind, fields, doc["_id"], TRAIN_PER_DOC[kind], k_test)
    for rule_id, _, examples, _, train_qs, test_qs in RULES:
        doc_id = f"rule-{rule_id}"
        train += [(q, doc_id) for q in train_qs.split("|")]
        test += [(q, doc_id) for q in test_qs.split("|")]
        if examples:
            word_kind, words = examples.split(": ")
            kind, words = RULE_WORD_KIND[word_kind], words.split()
            assert not entities & set(words), f"{rule_id}: example word is also a document"
            for w in rng.sample(words, min(TRAIN_PER_RULE_WORDS, len(words))):
                ask(kind, dict.fromkeys(WORD_FIELDS, w), doc_id, 1, 0)
            ask(kind, dict.fromkeys(WORD_FIELDS, rng.choice(words)), doc_id, 0, 1)
    for split, text, doc_id in CONFUSABLES:
        (train if split == "train" else test).append((text, doc_id))
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def validate(corpus, train, test) -> None:
    ids = [d["_id"] for d in corpus]
    assert len(ids) == len(set(ids)), "duplicate document id"
    for d in corpus:
        assert d["title"] and d["text"], d["_id"]
        assert len(d["text"].split()) <= 60, f"{d['_id']}: document over 60 words"
    texts = [t for t, _ in train + test]
    assert len(texts) == len(set(texts)), "the same query text asks about two documents"
    train_t = {t for kind in TEMPLATES.values() for t in kind[0]}
    assert not train_t & {t for kind in TEMPLATES.values() for t in kind[1]}, \
        "a template is in both splits"
    assert {d for _, d in train + test} <= set(ids), "qrels name a missing document"
    assert {d for _, d in test} <= {d for _, d in train}, "a test document has no train query"


def reduce(queries, n):
    """Every k-th query, cut to n, so that the kept queries spread over the whole list."""
    if n <= 0 or n >= len(queries):
        return list(queries)
    return queries[::len(queries) // n][:n]


def readme(n_docs, by_kind, n_train, n_test, reduced) -> str:
    kinds = ", ".join(f"{n} {k}" for k, n in by_kind)
    command = "python3 scripts/make_demo_data.py" + (f" --reduced {reduced} --out DIR"
                                                     if reduced else "")
    note = ("\n\nThis is a reduced copy: all documents, but only every k-th query of the full "
            "dataset." if reduced else "")
    return f"""# Demo dataset: English irregular forms and spelling rules

A small retrieval dataset in BEIR layout, used to demonstrate and test `distill` without
downloading anything. The corpus is a knowledge base of English grammar: irregular verbs
(base form, past simple, past participle, an example), regular verbs that look like irregular
ones (found/find, fell/fall, lie/lay, hang/hanged) as hard negatives, noun plurals, irregular
comparisons, and spelling and usage rules. Queries are questions a learner might type; each has
exactly one relevant document. Train and test queries are made from disjoint sets of phrasing
templates, so the test split measures generalisation to unseen phrasings.{note}

- `corpus.jsonl`: {n_docs} documents ({kinds})
- `queries.jsonl`: {n_train + n_test} queries
- `qrels/train.tsv`: {n_train} queries; `qrels/test.tsv`: {n_test} queries (score 1)

Generated by `scripts/make_demo_data.py` (Python standard library only, fixed seed);
`{command}` regenerates it byte-identically.

Licence: written entirely by this project (no public dataset copied); distributed under the
repository's licence (Apache-2.0).
"""


def write(out: pathlib.Path, corpus, queries, splits, readme_text) -> None:
    """Write to a sibling temporary folder, then move it into place."""
    if out.exists() and not set(p.name for p in out.iterdir()) <= OUTPUT_FILES:
        sys.exit(f"refusing to replace {out}: it holds files this script did not write")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "qrels").mkdir(parents=True)

    def lines(path, rows):
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(row + "\n" for row in rows)

    lines(tmp / "corpus.jsonl", (json.dumps(d, ensure_ascii=False) for d in corpus))
    lines(tmp / "queries.jsonl", (json.dumps(q, ensure_ascii=False) for q in queries))
    for name, pairs in splits.items():
        lines(tmp / "qrels" / f"{name}.tsv",
              ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t1" for q, d in pairs])
    with open(tmp / "README.md", "w", encoding="utf-8", newline="\n") as f:
        f.write(readme_text)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, help="output folder (default: data/demo)")
    parser.add_argument("--reduced", type=int, metavar="N",
                        help="keep about N train and N // 3 test queries (needs --out)")
    args = parser.parse_args()
    if args.reduced is not None and (args.out is None or args.reduced < 3):
        parser.error("--reduced needs --out and N >= 3")
    out = args.out or ROOT / "data" / "demo"

    rng = random.Random(SEED)
    docs = build_documents()
    add_query_fields(docs)
    train, test = build_queries(docs, rng)
    corpus = [doc for _, doc, _, _ in docs]
    validate(corpus, train, test)
    if args.reduced:
        train, test = reduce(train, args.reduced), reduce(test, args.reduced // 3)

    queries, splits = [], {"train": [], "test": []}
    for name, pairs in [("train", train), ("test", test)]:
        for i, (text, doc_id) in enumerate(pairs, start=1):
            qid = f"q-{name}-{i:04d}"
            queries.append({"_id": qid, "text": text})
            splits[name].append((qid, doc_id))
    by_kind = {}
    for kind, doc, _, _ in docs:
        label = {"verb": "verbs", "noun": "nouns", "comparison": "comparisons",
                 "rule": "rules"}[kind]
        by_kind[label] = by_kind.get(label, 0) + 1
    write(out, corpus, queries, splits,
          readme(len(corpus), list(by_kind.items()), len(train), len(test), args.reduced))
    print(f"demo: {len(corpus)} documents ({', '.join(f'{n} {k}' for k, n in by_kind.items())}), "
          f"{len(train)} train and {len(test)} test queries -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
