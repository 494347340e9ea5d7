"""Script checks of the intro-shell lab (labkit parses this file during validation and runs it only when grading)."""


def grade_shared_folder(guests, params):
    """One point each: /srv/<project> is a folder owned by root, its group is the team, its mode is 2770."""
    folder = f"/srv/{params['project']}"
    result = guests["box"].run(f"stat -c '%F|%U|%G|%a' {folder}", timeout=10)
    if result.exit_code != 0:
        return 0, f"{folder} does not exist."
    kind, owner, group, mode = (result.out.strip().split("|") + ["", "", "", ""])[:4]
    points = 0
    notes = []
    if kind == "directory" and owner == "root":
        points += 1
    else:
        notes.append(f"{folder} must be a folder owned by root (it is a {kind} owned by {owner})")
    if group == params["team"]:
        points += 1
    else:
        notes.append(f"its group must be {params['team']} (it is {group})")
    if mode == "2770":
        points += 1
    else:
        notes.append(f"its mode must be 2770 (it is {mode})")
    return points, "; ".join(notes) or f"{folder} is shared with {params['team']}, and new files inherit the group."
