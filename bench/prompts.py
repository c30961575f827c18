"""The prompts every benchmark runs the bundled default on: what users type, not a stand-in object.

Singles, stacks, the three front-facing objects, and prompts with words the default never saw (its objects are
then guesses, and often hazier, which is slower to march)."""

BENCH_PROMPTS = [
    "a red cube",                                   # singles
    "a large yellow torus",
    "a small blue cone",
    "a red cube on top of a blue sphere",           # stacks
    "a blue cone on top of a yellow sphere",
    "a green cylinder on top of a white cube",
    "a white snowman with a carrot nose",           # front-facing objects
    "a yellow duck with an orange beak",
    "a red house with a white door",
    "a purple dragon made of glass",                # words the default never saw
    "an astronaut riding a horse",
    "a teapot",
]
