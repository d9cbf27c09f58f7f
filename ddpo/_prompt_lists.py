"""Word lists behind the prompt functions in :mod:`ddpo.prompts` (data only).

``IMAGENET_ANIMALS`` holds the readable names of ImageNet-1k classes 0-397, the animal classes,
in class-index order (index ``i`` is class ``i``). ``SIMPLE_ANIMALS`` and ``ACTIVITIES`` are the
lists that the DDPO reference code used for its animal and prompt-alignment tasks.
``TEXT_TEMPLATES`` and ``TEXT_PHRASES`` (written for this library) make the text-rendering
prompts: each template names a thing that carries text and holds one ``{text}`` slot, which the
prompt function fills with a phrase between double quotes.
"""

SIMPLE_ANIMALS: tuple[str, ...] = (
    "cat", "dog", "horse", "monkey", "rabbit", "zebra", "spider", "bird", "sheep", "deer",
    "cow", "goat", "lion", "tiger", "bear", "raccoon", "fox", "wolf", "lizard", "beetle",
    "ant", "butterfly", "fish", "shark", "whale", "dolphin", "squirrel", "mouse", "rat",
    "snake", "turtle", "frog", "chicken", "duck", "goose", "bee", "pig", "turkey", "fly",
    "llama", "camel", "bat", "gorilla", "hedgehog", "kangaroo", "snail", "hippopotamus",
    "cheetah", "crocodile", "lobster", "octopus",
)  # fmt: skip

ACTIVITIES: tuple[str, ...] = ("washing dishes", "riding a bike", "playing chess")

IMAGENET_ANIMALS: tuple[str, ...] = (
    # 0-9: fish, birds
    "tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark",
    "electric ray", "stingray", "rooster", "hen", "ostrich",
    # 10-24: birds
    "brambling", "goldfinch", "house finch", "junco", "indigo bunting", "American robin",
    "bulbul", "jay", "magpie", "chickadee", "American dipper", "kite", "bald eagle",
    "vulture", "great grey owl",
    # 25-32: amphibians
    "fire salamander", "smooth newt", "newt", "spotted salamander", "axolotl",
    "American bullfrog", "tree frog", "tailed frog",
    # 33-68: reptiles
    "loggerhead sea turtle", "leatherback sea turtle", "mud turtle", "terrapin", "box turtle",
    "banded gecko", "green iguana", "Carolina anole", "desert grassland whiptail lizard",
    "agama", "frilled-necked lizard", "alligator lizard", "Gila monster",
    "European green lizard", "chameleon", "Komodo dragon", "Nile crocodile",
    "American alligator", "triceratops", "worm snake", "ring-necked snake",
    "eastern hog-nosed snake", "smooth green snake", "kingsnake", "garter snake",
    "water snake", "vine snake", "night snake", "boa constrictor", "African rock python",
    "Indian cobra", "green mamba", "sea snake", "Saharan horned viper",
    "eastern diamondback rattlesnake", "sidewinder rattlesnake",
    # 69-79: arthropods
    "trilobite", "harvestman", "scorpion", "yellow garden spider", "barn spider",
    "European garden spider", "southern black widow", "tarantula", "wolf spider", "tick",
    "centipede",
    # 80-100: birds
    "black grouse", "ptarmigan", "ruffed grouse", "prairie grouse", "peafowl", "quail",
    "partridge", "African grey parrot", "macaw", "sulphur-crested cockatoo", "lorikeet",
    "coucal", "bee eater", "hornbill", "hummingbird", "jacamar", "toucan", "drake",
    "red-breasted merganser", "goose", "black swan",
    # 101-106: mammals
    "tusker", "echidna", "platypus", "wallaby", "koala", "wombat",
    # 107-126: invertebrates
    "jellyfish", "sea anemone", "brain coral", "flatworm", "nematode", "conch", "snail",
    "slug", "sea slug", "chiton", "chambered nautilus", "Dungeness crab", "rock crab",
    "fiddler crab", "red king crab", "American lobster", "spiny lobster", "crayfish",
    "hermit crab", "isopod",
    # 127-146: birds
    "white stork", "black stork", "spoonbill", "flamingo", "little blue heron",
    "great egret", "bittern", "crane", "limpkin", "common gallinule", "American coot",
    "bustard", "ruddy turnstone", "dunlin", "common redshank", "dowitcher",
    "oystercatcher", "pelican", "king penguin", "albatross",
    # 147-150: marine mammals
    "grey whale", "killer whale", "dugong", "sea lion",
    # 151-268: dogs
    "Chihuahua", "Japanese Chin", "Maltese", "Pekingese", "Shih Tzu",
    "King Charles Spaniel", "Papillon", "toy terrier", "Rhodesian Ridgeback", "Afghan Hound",
    "Basset Hound", "Beagle", "Bloodhound", "Bluetick Coonhound",
    "Black and Tan Coonhound", "Treeing Walker Coonhound", "English foxhound",
    "Redbone Coonhound", "borzoi", "Irish Wolfhound", "Italian Greyhound", "Whippet",
    "Ibizan Hound", "Norwegian Elkhound", "Otterhound", "Saluki", "Scottish Deerhound",
    "Weimaraner", "Staffordshire Bull Terrier", "American Staffordshire Terrier",
    "Bedlington Terrier", "Border Terrier", "Kerry Blue Terrier", "Irish Terrier",
    "Norfolk Terrier", "Norwich Terrier", "Yorkshire Terrier", "Wire Fox Terrier",
    "Lakeland Terrier", "Sealyham Terrier", "Airedale Terrier", "Cairn Terrier",
    "Australian Terrier", "Dandie Dinmont Terrier", "Boston Terrier", "Miniature Schnauzer",
    "Giant Schnauzer", "Standard Schnauzer", "Scottish Terrier", "Tibetan Terrier",
    "Australian Silky Terrier", "Soft-coated Wheaten Terrier", "West Highland White Terrier",
    "Lhasa Apso", "Flat-Coated Retriever", "Curly-coated Retriever", "Golden Retriever",
    "Labrador Retriever", "Chesapeake Bay Retriever", "German Shorthaired Pointer",
    "Vizsla", "English Setter", "Irish Setter", "Gordon Setter", "Brittany dog",
    "Clumber Spaniel", "English Springer Spaniel", "Welsh Springer Spaniel",
    "Cocker Spaniel", "Sussex Spaniel", "Irish Water Spaniel", "Kuvasz", "Schipperke",
    "Groenendael dog", "Malinois", "Briard", "Australian Kelpie", "Komondor",
    "Old English Sheepdog", "Shetland Sheepdog", "collie", "Border Collie",
    "Bouvier des Flandres dog", "Rottweiler", "German Shepherd Dog", "Dobermann",
    "Miniature Pinscher", "Greater Swiss Mountain Dog", "Bernese Mountain Dog",
    "Appenzeller Sennenhund", "Entlebucher Sennenhund", "Boxer", "Bullmastiff",
    "Tibetan Mastiff", "French Bulldog", "Great Dane", "St. Bernard", "husky",
    "Alaskan Malamute", "Siberian Husky", "Dalmatian", "Affenpinscher", "Basenji", "pug",
    "Leonberger", "Newfoundland dog", "Great Pyrenees dog", "Samoyed", "Pomeranian",
    "Chow Chow", "Keeshond", "brussels griffon", "Pembroke Welsh Corgi",
    "Cardigan Welsh Corgi", "Toy Poodle", "Miniature Poodle", "Standard Poodle",
    "Mexican hairless dog",
    # 269-280: wild dogs
    "grey wolf", "Alaskan tundra wolf", "red wolf", "coyote", "dingo", "dhole",
    "African wild dog", "hyena", "red fox", "kit fox", "Arctic fox", "grey fox",
    # 281-299: cats, bears, mongooses
    "tabby cat", "tiger cat", "Persian cat", "Siamese cat", "Egyptian Mau", "cougar",
    "lynx", "leopard", "snow leopard", "jaguar", "lion", "tiger", "cheetah", "brown bear",
    "American black bear", "polar bear", "sloth bear", "mongoose", "meerkat",
    # 300-329: insects, echinoderms
    "tiger beetle", "ladybug", "ground beetle", "longhorn beetle", "leaf beetle",
    "dung beetle", "rhinoceros beetle", "weevil", "fly", "bee", "ant", "grasshopper",
    "cricket insect", "stick insect", "cockroach", "praying mantis", "cicada", "leafhopper",
    "lacewing", "dragonfly", "damselfly", "red admiral butterfly", "ringlet butterfly",
    "monarch butterfly", "small white butterfly", "sulphur butterfly",
    "gossamer-winged butterfly", "starfish", "sea urchin", "sea cucumber",
    # 330-388: mammals
    "cottontail rabbit", "hare", "Angora rabbit", "hamster", "porcupine", "fox squirrel",
    "marmot", "beaver", "guinea pig", "common sorrel horse", "zebra", "pig", "wild boar",
    "warthog", "hippopotamus", "ox", "water buffalo", "bison", "ram (adult male sheep)",
    "bighorn sheep", "Alpine ibex", "hartebeest", "impala (antelope)", "gazelle",
    "arabian camel", "llama", "weasel", "mink", "European polecat", "black-footed ferret",
    "otter", "skunk", "badger", "armadillo", "three-toed sloth", "orangutan", "gorilla",
    "chimpanzee", "gibbon", "siamang", "guenon", "patas monkey", "baboon", "macaque",
    "langur", "black-and-white colobus", "proboscis monkey", "marmoset",
    "white-headed capuchin", "howler monkey", "titi monkey", "Geoffroy's spider monkey",
    "common squirrel monkey", "ring-tailed lemur", "indri", "Asian elephant",
    "African bush elephant", "red panda", "giant panda",
    # 389-397: fish
    "snoek fish", "eel", "silver salmon", "rock beauty fish", "clownfish", "sturgeon",
    "gar fish", "lionfish", "pufferfish",
)  # fmt: skip

if len(IMAGENET_ANIMALS) != 398:  # pragma: no cover - guards the data above
    raise RuntimeError(f"IMAGENET_ANIMALS must hold 398 names, has {len(IMAGENET_ANIMALS)}")


TEXT_TEMPLATES: tuple[str, ...] = (
    'a wooden sign that says "{text}"',
    'a neon sign on a brick wall that reads "{text}"',
    'a coffee mug with the words "{text}" printed on it',
    'a chalkboard menu in a cafe with "{text}" written on it',
    'a birthday cake with "{text}" written in icing',
    'a green street sign that reads "{text}"',
    'a white t-shirt printed with "{text}"',
    'a hardcover book titled "{text}"',
    'a shop front with "{text}" painted above the door',
    'a concert poster with the headline "{text}"',
    'a banner that says "{text}" hanging across a street',
    'a handwritten note on lined paper that says "{text}"',
    'a billboard at night that says "{text}"',
    'a cardboard box labelled "{text}"',
    'the word "{text}" written in the sand on a beach',
    'a vintage postcard that says "{text}"',
    'a doormat that says "{text}"',
    'a yellow sticky note with "{text}" written on it',
    'a glass jar with a paper label that reads "{text}"',
    'a classroom whiteboard with "{text}" written in blue marker',
    'a train station display board showing "{text}"',
    'a fortune cookie slip that reads "{text}"',
    'a knitted sweater with "{text}" stitched across the chest',
    'a red stamp on an envelope that says "{text}"',
)  # fmt: skip

TEXT_PHRASES: tuple[str, ...] = (
    "OPEN", "CLOSED", "HELLO", "WELCOME", "SALE", "EXIT", "STOP", "THANK YOU", "GOOD LUCK",
    "FRESH BREAD", "HOT COFFEE", "NO PARKING", "KEEP OUT", "QUIET PLEASE", "BAKERY",
    "LIBRARY", "MARKET", "GARDEN", "PIZZA", "TICKETS", "LEMONADE", "ICE CREAM", "PHARMACY",
    "HOTEL", "NORTH", "PUSH", "PULL", "DANGER", "DREAM BIG", "HAPPY BIRTHDAY", "SUNRISE",
    "ROBOT", "JAZZ NIGHT", "FRAGILE", "URGENT", "Good Morning", "See You Soon", "Home Sweet Home",
    "Best Friends", "Let It Snow", "Moon River", "Blue Harbor", "Open Late", "Daily Special",
    "Lost and Found", "Tea Time", "Step Inside", "Mind the Gap",
)  # fmt: skip

_BAD_TEMPLATES = [t for t in TEXT_TEMPLATES if t.count("{text}") != 1 or t.count('"') != 2]
if _BAD_TEMPLATES:  # pragma: no cover - guards the data above
    raise RuntimeError(f"templates without exactly one quoted {{text}} slot: {_BAD_TEMPLATES}")
if any('"' in phrase or not phrase.strip() for phrase in TEXT_PHRASES):  # pragma: no cover
    raise RuntimeError("TEXT_PHRASES must be non-empty phrases without double quotes")
