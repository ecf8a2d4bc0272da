//! The built-in English word list: common adjectives, nouns and verbs, written for this crate.
//!
//! Needle keys are `adjective-noun` pairs (about 340 × 440 of them); the common-words task draws
//! single words from all three lists, keeping only those that are not part of another word of
//! the list, so that a substring match of one answer can never
//! be satisfied by a different word (the scorer, like RULER's, matches substrings).

use std::sync::OnceLock;

/// Adjectives (keys of the needle tasks, words of the common-words task).
const ADJECTIVES: &str = "
able absent active actual afraid agile alert alive amber ancient angry annual anxious arctic
ashen awake aware awful bald bare basic bitter blank bleak blind blond bold bored brave brief
bright brisk broad broken bronze brown bumpy busy calm candid careful casual cheap cheerful
chief chilly civil classic clean clear clever close cloudy clumsy coarse cold comic compact
complex cool copper correct cosmic costly cozy crazy crisp crude cruel curious curly cute daily
damp dark dear decent deep dense direct dizzy double drowsy dry dual dull dusty eager early
earnest easy elder elegant empty endless entire equal even exact exotic faint fair false famous
fancy fast fatal fierce final fine firm fiscal flat fluffy fond formal fragile frank free fresh
frosty frozen full funny fuzzy gentle giant gifted glad global golden grand grateful grave gray
great greedy green grim gritty gross grumpy guilty handy happy hard harsh hasty healthy heavy
hidden high hollow holy honest hot huge humble hungry icy ideal idle immense inner ivory jolly
juicy keen kind large late lazy lean legal level light likely little lively local lonely long
loose loud lovely loyal lucky lunar mad major mellow mental merry mild minor misty modern modest
moist moral muddy mute narrow nasty native naval neat nervous new nice noble noisy normal novel
odd old open oral orange outer pale patient plain pleasant polite poor popular precise pretty
prime proud pure purple quick quiet rainy rapid rare raw ready real rich rigid ripe rough round
royal rude rural rusty sacred sad safe salty sandy scarce shallow sharp shiny short shy silent
silky silly silver simple single sleepy slim slow small smart smooth snowy soft solar solid sour
spare spicy square stable steady steep sticky stiff still stormy strange strict strong subtle
sudden sunny super sweet swift tall tame tender tense thick thin tidy tiny tired total tough
tragic tribal tricky true ugly unique upper urban urgent usual vague valid vast velvet violet
vital vivid warm wary weak weary wet white whole wide wild wise witty wooden worried young zany
zealous
";

/// Nouns (keys of the needle tasks, words of the common-words task).
const NOUNS: &str = "
acorn actor adult airport album anchor angle animal ankle apple apron arch arena army arrow
artist atlas attic author avenue badge bakery balcony ball banana band banjo bank barn barrel
basket beach beacon bean beard bed bee bell belt bench berry bicycle bird blanket blossom boat
bone book boot bottle boulder bowl box bracelet branch bread brick bridge broom brush bucket
bull bunny butter button cabin cable cactus cake camel camera camp canal candle cannon canoe
canyon captain card carpet carrot castle cat cave cellar chair chalk cherry chess chicken
chimney church cinema circle city cliff clock cloud coat coconut coffee coin comet compass
cookie corn cottage cotton cousin cow crab crane crayon creek cricket crown cup curtain cushion
daisy dancer desert desk diamond dinner doctor dog doll dolphin donkey door dragon drawer dream
dress drum duck eagle earth engine envelope falcon farm feather fence ferry field finger fish
flag flame flute forest fork fountain fox frog fruit garage garden garlic gate ghost gift
ginger glacier glass glove goat guitar hammer harbor harp hat hawk helmet hill horse hotel house
island jacket jar jelly jewel jungle kettle kitchen kite knife ladder lake lamp lantern lemon
letter library lighthouse lily lion lizard lobster locket magnet mango map maple marble market
meadow melon mirror monkey moon mountain mouse mug museum mushroom nest net notebook oak ocean
office olive onion orchard otter owl oyster paddle painter palace panda paper parrot pasta path
peach pear pebble pen pencil pepper piano pickle picture pig pillow pilot pine pipe pirate
planet plate plum pocket poem pond potato pumpkin puppet puzzle quilt rabbit radio raft rain
rainbow raven ribbon rice river road robot rock rocket roof rope rose saddle sail salad salmon
sand sandal scarf school scissors sea seed shadow shark sheep shell ship shirt shoe shovel
singer sister skate sky sled snail snake sock sofa soup spider spoon squirrel stage star statue
stone storm stove straw stream street sugar suitcase sun swan sweater sword table tail teacher
temple tent thread throne ticket tiger toast tomato tooth torch towel tower toy tractor train
tree truck trumpet tulip tunnel turtle umbrella valley vase village violin volcano wagon wall
wallet walnut water wave whale wheel whistle window wing wizard wolf yacht yard zebra acrobat
badger beetle biscuit blender bonnet bookcase buffalo cabbage candy cargo cheese coyote cupcake
dentist dinosaur elephant elbow ferret fiddle giraffe goblet gorilla granite hamster hedgehog
hockey iceberg igloo jaguar kangaroo koala lemonade leopard llama meteor mitten muffin napkin
noodle orbit ostrich pancake panther parsley peacock pelican penguin pigeon popcorn pudding
raccoon reindeer sardine satchel skeleton sparrow stapler tadpole teapot thimble toucan trolley
tuba vulture waffle walrus
";

/// Verbs (words of the common-words task only).
const VERBS: &str = "
accept admire arrive bake balance bark bathe beg boil borrow bounce breathe bury calculate carry
carve chase chew climb collect comb cook crawl cross dance deliver dig dive drag draw drift
drink drive dust echo escape explore fetch fix float fold follow gather glide glow grab greet
grin grow guard guess hang hike hop hug hum hunt hurry invent jog juggle jump kick kneel knit
knock laugh launch lift listen march melt mend mix nod obey offer paint pause peel pick plant
play polish pour pray pull push race reach read relax repair rescue ride roar roll rush scrub
search shake shine shout sing sip skip sleep slide smile sneeze snore sort spill spin splash
squeeze stack stir stretch swim swing talk taste throw tickle travel trust tumble twist visit
wade wander wash watch whisper wiggle wink wobble wrap write yawn yell zoom
";

fn list(text: &'static str) -> Vec<&'static str> {
    let mut words: Vec<&str> = text.split_whitespace().collect();
    words.sort_unstable();
    words.dedup();
    words
}

/// The adjectives, sorted and distinct.
pub(crate) fn adjectives() -> &'static [&'static str] {
    static CELL: OnceLock<Vec<&'static str>> = OnceLock::new();
    CELL.get_or_init(|| list(ADJECTIVES))
}

/// The nouns, sorted and distinct.
pub(crate) fn nouns() -> &'static [&'static str] {
    static CELL: OnceLock<Vec<&'static str>> = OnceLock::new();
    CELL.get_or_init(|| list(NOUNS))
}

/// Every adjective, noun and verb (sorted, distinct) that is not contained in another word of
/// the list.
pub(crate) fn vocabulary() -> &'static [&'static str] {
    static CELL: OnceLock<Vec<&'static str>> = OnceLock::new();
    CELL.get_or_init(|| {
        let mut all: Vec<&'static str> =
            [ADJECTIVES, NOUNS, VERBS].into_iter().flat_map(str::split_whitespace).collect();
        all.sort_unstable();
        all.dedup();
        all.iter()
            .copied()
            .filter(|w| !all.iter().any(|other| other != w && other.contains(w)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_lowercase_ascii_and_large_enough() {
        for w in adjectives().iter().chain(nouns()) {
            assert!(w.bytes().all(|b| b.is_ascii_lowercase()), "{w}");
        }
        assert!(adjectives().len() >= 300, "{}", adjectives().len());
        assert!(nouns().len() >= 400, "{}", nouns().len());
        let vocab = vocabulary();
        assert!(vocab.len() >= 700, "{}", vocab.len());
        for (i, a) in vocab.iter().enumerate() {
            for b in &vocab[i + 1..] {
                assert!(!a.contains(b) && !b.contains(a), "{a} / {b}");
            }
        }
        assert!(!vocab.contains(&"cloud") && vocab.contains(&"cloudy"), "substrings are dropped");
    }
}
