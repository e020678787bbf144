"""The diagnostic tasks FairDx trains for, phrased once for every backbone family.

A task fixes what the model is asked and what the two classes are called:

- the Qwen2.5-VL classifier puts ``question`` into the chat template next to the image
  (Gu et al., fair LoRA §3.1: "a fundus photograph and a clinical question");
- CLIP embeds the two ``class_prompts`` and scores the image against each (CMAC-MMD: alignment
  between the image and each class description).

Class index 0 is always the negative (healthy / benign) class and index 1 the positive one, which is
how every loader encodes labels.
"""

from __future__ import annotations

from dataclasses import dataclass

from training import methods


@dataclass(frozen=True)
class Task:
    """A binary diagnostic task.

    name: short identifier used in configs and run directories ("fundus", "skin").
    classes: display names of class 0 (negative) and class 1 (positive).
    question: the clinical question shown to a chat VLM together with the image.
    class_prompts: one text description per class, in class order, for CLIP-style scoring.
    proposed_method: the objective the task's paper proposes (Gu et al.'s Hybrid for glaucoma, CMAC-MMD
        for skin): the adapter Diagnose offers first.
    """

    name: str
    classes: tuple[str, str]
    question: str
    class_prompts: tuple[str, str]
    proposed_method: str = methods.BASELINE.name

    def __post_init__(self) -> None:
        problems = []
        if not self.name:
            problems.append("name is empty")
        if len(self.classes) != 2:
            problems.append(f"classes must name exactly 2 classes, got {len(self.classes)}")
        if len(self.class_prompts) != len(self.classes):
            problems.append(
                f"class_prompts must give one prompt per class ({len(self.classes)}), got {len(self.class_prompts)}"
            )
        if not self.question.strip():
            problems.append("question is empty")
        if problems:
            raise ValueError(f"invalid task {self.name!r}: " + "; ".join(problems))


TASKS: dict[str, Task] = {
    "fundus": Task(
        name="fundus",
        classes=("no glaucoma", "glaucoma"),
        question="Is there glaucoma in this fundus photograph? Answer yes or no.",
        class_prompts=(
            "a fundus photograph of a healthy optic nerve head",
            "a fundus photograph of an optic nerve head with glaucoma",
        ),
        proposed_method=methods.HYBRID.name,
    ),
    "skin": Task(
        name="skin",
        classes=("benign", "malignant"),
        question="Is the skin lesion in this dermoscopic image malignant? Answer yes or no.",
        class_prompts=(
            "a dermoscopic image of a benign skin lesion",
            "a dermoscopic image of a malignant skin lesion",
        ),
        proposed_method=methods.CMAC.name,
    ),
}


def get_task(task: str | Task) -> Task:
    """Return the task called `task` (a `Task` passes through unchanged)."""
    if isinstance(task, Task):
        return task
    try:
        return TASKS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(sorted(TASKS))}") from None
