"""Generate the bundled ``tool_tickets`` demo dataset: a support agent that calls ticket tools.

    examples/data/tool_tickets/train.jsonl    (240 rows)
    examples/data/tool_tickets/heldout.jsonl  ( 60 rows)

Each line is a `messages` row with its `tools` (OpenAI style), an `id` and a `lang` (en or ko, about
40% Korean). The five tools are lookup_order(order_id), refund(order_id, amount), cancel_order(order_id,
reason?), change_address(order_id, address) and create_ticket(category, summary); each row offers three
to five of them, always the one it needs. Rows are of five kinds:

- call: the user asks, the conversation ends on the call the model should make;
- loop: the call, the tool's result, then the answer in text;
- text: a question no tool answers (hours, the return policy), answered in text;
- parallel: two orders looked up at once, both results, then one answer;
- ask: a refund without its amount, the assistant asks for it, then calls.

Held-out rows use request wordings that training never uses, and are of the kinds that end on a call
or on a text answer to a tool-less question (call, text, ask), so `tunesmith eval` scores the call
the model makes. Everything comes from one ``random.Random(SEED)``: rerunning reproduces both files
byte for byte. Only the standard library is used.

    python examples/data/make_tool_tickets.py           # (re)write the two files
    python examples/data/make_tool_tickets.py --check   # verify the files are up to date
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

SEED = 14
OUT = Path(__file__).resolve().parent / "tool_tickets"
SIZES = {"train": 240, "heldout": 60}

ORDER_ID = {"type": "string", "description": "Order number, e.g. A-1234", "pattern": "^[A-Z]-[0-9]{4}$"}
TOOLS = {
    "lookup_order": ("Look up an order: its status, items, total and delivery address.",
                     {"order_id": ORDER_ID}, ["order_id"]),
    "refund": ("Refund part or all of an order to the original payment method.",
               {"order_id": ORDER_ID, "amount": {"type": "number", "exclusiveMinimum": 0, "description": "Amount in dollars"}},
               ["order_id", "amount"]),
    "cancel_order": ("Cancel an order that has not shipped yet.",
                     {"order_id": ORDER_ID, "reason": {"type": "string", "description": "Why the customer cancels"}}, ["order_id"]),
    "change_address": ("Change the delivery address of an order that has not shipped yet.",
                       {"order_id": ORDER_ID, "address": {"type": "string"}}, ["order_id", "address"]),
    "create_ticket": ("Open a ticket for the support team when no other tool can help.",
                      {"category": {"type": "string", "enum": ["billing", "technical", "account"]}, "summary": {"type": "string"}},
                      ["category", "summary"]),
}

# Per tool and language: (training wordings, held-out wordings); {id}, {amount}, {address}, {reason} are slots.
ASKS = {
    "lookup_order": {
        "en": (["Where is my order {id}?", "Can you check the status of {id}?", "What's happening with order {id}? It's been a week.",
                "Has {id} shipped yet?"], ["Any news on {id}?", "I'd like an update on order {id}, please."]),
        "ko": (["주문 {id} 어디쯤 왔나요?", "{id} 주문 상태 확인해 주세요.", "{id} 배송 시작됐나요?"], ["{id} 주문 어떻게 되고 있어요?"]),
    },
    "refund": {
        "en": (["Please refund ${amount} on order {id}.", "I was overcharged ${amount} for {id}, I want it back.",
                "Refund {id}, the full ${amount}."], ["Could I get ${amount} back for order {id}?"]),
        "ko": (["주문 {id} {amount}달러 환불해 주세요.", "{id} 건 {amount}달러 돌려받고 싶어요."], ["{id} 주문에서 {amount}달러 환불 가능할까요?"]),
    },
    "cancel_order": {
        "en": (["Cancel order {id}, {reason}.", "I don't want {id} anymore: {reason}."], ["Please stop order {id}, {reason}."]),
        "ko": (["{id} 주문 취소해 주세요. {reason}", "주문 {id} 취소할게요, {reason}"], ["{id} 취소 부탁드려요. {reason}"]),
    },
    "change_address": {
        "en": (["Ship {id} to {address} instead.", "New address for order {id}: {address}"], ["I moved. Please send {id} to {address}."]),
        "ko": (["{id} 배송지를 {address}(으)로 바꿔 주세요.", "주문 {id} 주소 변경: {address}"], ["이사했어요. {id}은(는) {address}(으)로 보내 주세요."]),
    },
    "create_ticket": {
        "en": (["The app crashes every time I open my cart.", "I can't log in since I changed my password.",
                "My invoice shows the wrong company name."], ["Two-factor codes never arrive on my phone."]),
        "ko": (["장바구니를 열면 앱이 꺼져요.", "비밀번호 바꾼 뒤로 로그인이 안 돼요."], ["인증 문자가 안 와요."]),
    },
}
TICKETS = {  # create_ticket's arguments for each of its wordings, in the order of ASKS
    "The app crashes every time I open my cart.": ("technical", "App crashes when the cart is opened"),
    "I can't log in since I changed my password.": ("account", "Cannot log in after a password change"),
    "My invoice shows the wrong company name.": ("billing", "Wrong company name on the invoice"),
    "Two-factor codes never arrive on my phone.": ("account", "Two-factor codes do not arrive by SMS"),
    "장바구니를 열면 앱이 꺼져요.": ("technical", "장바구니를 열면 앱 종료"),
    "비밀번호 바꾼 뒤로 로그인이 안 돼요.": ("account", "비밀번호 변경 후 로그인 불가"),
    "인증 문자가 안 와요.": ("account", "인증 문자 미수신"),
}
REFUND_FIRST = {  # kind `ask`: a refund request without its amount, training and held-out wordings
    "en": (["I want a refund for order {id}.", "Can you refund {id}?"], ["I'd like some money back on {id}."]),
    "ko": (["{id} 주문 환불해 주세요.", "주문 {id} 환불 원해요."], ["{id} 환불 요청합니다."]),
}
REASONS = {"en": ["I ordered the wrong size", "it's too late for the party", "I found it cheaper elsewhere"],
           "ko": ["사이즈를 잘못 골랐어요", "필요 없어졌어요", "다른 데서 샀어요"]}
ADDRESSES = {"en": ["12 Oak Street, Portland", "4/7 King Road, Leeds", "88 Harbor Ave, Apt 3, Miami"],
             "ko": ["서울시 마포구 월드컵로 12", "부산시 해운대구 센텀로 5", "대전시 유성구 대학로 99"]}
STATUSES = ["shipped", "processing", "delivered"]
QUESTIONS = {  # kind `text`: (question, answer), training and held-out
    "en": ([("What are your opening hours?", "Our support team is available 9am to 6pm, Monday to Friday."),
            ("How long do I have to return an item?", "You can return unused items within 30 days of delivery.")],
           [("Do you ship abroad?", "Yes, we ship to most countries; delivery takes 5 to 10 business days.")]),
    "ko": ([("고객센터 운영 시간이 어떻게 되나요?", "평일 오전 9시부터 오후 6시까지 상담해 드립니다."),
            ("반품은 언제까지 가능한가요?", "배송 완료 후 30일 이내 미사용 상품은 반품하실 수 있습니다.")],
           [("해외 배송도 되나요?", "네, 대부분의 국가로 배송되며 5~10 영업일이 걸립니다.")]),
}
REPLIES = {
    "en": {"lookup_order": "Order {id} is {status}.", "refund": "Done: ${amount} is on its way back for {id}.",
           "cancel_order": "Order {id} is cancelled.", "change_address": "Order {id} will go to {address}.",
           "create_ticket": "I've opened ticket {ticket}; the team will reply by email.", "ask": "How much should I refund for {id}?",
           "both": "Order {id} is {status}, and order {id2} is {status2}."},
    "ko": {"lookup_order": "주문 {id}은(는) 현재 {status} 상태입니다.", "refund": "{id} 주문 {amount}달러 환불 처리했습니다.",
           "cancel_order": "{id} 주문을 취소했습니다.", "change_address": "{id} 주문은 {address}(으)로 배송됩니다.",
           "create_ticket": "{ticket}번 문의를 접수했습니다. 이메일로 답변드릴게요.", "ask": "{id} 주문에서 얼마를 환불해 드릴까요?",
           "both": "{id} 주문은 {status}, {id2} 주문은 {status2} 상태입니다."},
}
KINDS = {"train": ["call"] * 8 + ["loop"] * 6 + ["text"] * 3 + ["parallel"] * 2 + ["ask"] * 1,
         "heldout": ["call"] * 7 + ["text"] * 2 + ["ask"] * 1}


def tool_spec(name: str) -> dict:
    description, properties, required = TOOLS[name]
    return {"type": "function", "function": {"name": name, "description": description,
                                             "parameters": {"type": "object", "properties": properties, "required": required}}}


def order_id(rng: random.Random) -> str:
    return f"{rng.choice('ABCK')}-{rng.randint(1000, 9999)}"


def call(number: int, name: str, arguments: dict) -> dict:
    return {"id": f"call_{number}", "type": "function", "function": {"name": name, "arguments": arguments}}


def request(rng: random.Random, tool: str, lang: str, split: str) -> tuple[str, dict]:
    """(user message, the call's arguments) for one request to `tool`."""
    train, held = ASKS[tool][lang]
    wording = rng.choice(held if split == "heldout" else train)
    slots = {"id": order_id(rng), "amount": rng.choice([12, 20, 35.5, 49.99, 80]), "reason": rng.choice(REASONS[lang]),
             "address": rng.choice(ADDRESSES[lang])}
    if tool == "create_ticket":
        category, summary = TICKETS[wording]
        return wording, {"category": category, "summary": summary}
    arguments = {"order_id": slots["id"]}
    if tool == "refund":
        arguments["amount"] = slots["amount"]
    if tool == "cancel_order" and "{reason}" in wording:
        arguments["reason"] = slots["reason"]
    if tool == "change_address":
        arguments["address"] = slots["address"]
    return wording.format(**slots), arguments


def result_and_reply(rng: random.Random, tool: str, arguments: dict, lang: str) -> tuple[str, str]:
    """What the tool returns (JSON text) and the assistant's answer after it."""
    values = {"id": arguments.get("order_id", ""), "amount": arguments.get("amount", ""), "address": arguments.get("address", ""),
              "status": rng.choice(STATUSES), "ticket": f"T-{rng.randint(10000, 99999)}"}
    result = {"lookup_order": {"order_id": values["id"], "status": values["status"]}, "refund": {"refunded": values["amount"]},
              "cancel_order": {"cancelled": True}, "change_address": {"address": values["address"]},
              "create_ticket": {"ticket": values["ticket"]}}[tool]
    return json.dumps(result, ensure_ascii=False), REPLIES[lang][tool].format(**values)


def conversation(rng: random.Random, kind: str, lang: str, split: str) -> tuple[list[dict], set[str]]:
    """The messages of one row and the tools it needs."""
    if kind == "text":
        question, answer = rng.choice(QUESTIONS[lang][split == "heldout"])
        return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], set()
    if kind == "parallel":
        (ask1, a1), (ask2, a2) = request(rng, "lookup_order", lang, split), request(rng, "lookup_order", lang, split)
        (r1, _), (r2, _) = result_and_reply(rng, "lookup_order", a1, lang), result_and_reply(rng, "lookup_order", a2, lang)
        reply = REPLIES[lang]["both"].format(id=a1["order_id"], status=json.loads(r1)["status"], id2=a2["order_id"], status2=json.loads(r2)["status"])
        joined = f"{ask1} {ask2}" if lang == "en" else f"{ask1} 그리고 {ask2}"
        return [{"role": "user", "content": joined},
                {"role": "assistant", "content": "", "tool_calls": [call(1, "lookup_order", a1), call(2, "lookup_order", a2)]},
                {"role": "tool", "tool_call_id": "call_1", "content": r1}, {"role": "tool", "tool_call_id": "call_2", "content": r2},
                {"role": "assistant", "content": reply}], {"lookup_order"}
    if kind == "ask":
        _, arguments = request(rng, "refund", lang, split)
        first = rng.choice(REFUND_FIRST[lang][split == "heldout"]).format(id=arguments["order_id"])
        question = REPLIES[lang]["ask"].format(id=arguments["order_id"])
        amount = f"${arguments['amount']}" if lang == "en" else f"{arguments['amount']}달러요."
        return [{"role": "user", "content": first}, {"role": "assistant", "content": question}, {"role": "user", "content": amount},
                {"role": "assistant", "content": "", "tool_calls": [call(1, "refund", arguments)]}], {"refund"}
    tool = rng.choice(list(TOOLS))
    ask, arguments = request(rng, tool, lang, split)
    messages = [{"role": "user", "content": ask}, {"role": "assistant", "content": "", "tool_calls": [call(1, tool, arguments)]}]
    if kind == "loop":
        result, reply = result_and_reply(rng, tool, arguments, lang)
        messages += [{"role": "tool", "tool_call_id": "call_1", "content": result}, {"role": "assistant", "content": reply}]
    return messages, {tool}


def rows(rng: random.Random, split: str, first_id: int) -> list[dict]:
    out = []
    for i in range(SIZES[split]):
        lang = "ko" if rng.random() < 0.4 else "en"
        messages, needed = conversation(rng, rng.choice(KINDS[split]), lang, split)
        offered = needed | set(rng.sample(sorted(TOOLS), rng.randint(2, 4)))
        tools = [tool_spec(name) for name in TOOLS if name in offered]
        out.append({"id": f"x{first_id + i:04d}", "lang": lang, "tools": tools, "messages": messages})
    return out


def render() -> dict[str, str]:
    rng = random.Random(SEED)
    train = rows(rng, "train", 1)
    heldout = rows(rng, "heldout", len(train) + 1)
    return {name: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in split) for name, split in (("train", train), ("heldout", heldout))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify the files are up to date instead of writing them")
    args = parser.parse_args()
    files = render()
    if args.check:
        stale = [name for name, text in files.items() if (OUT / f"{name}.jsonl").read_text(encoding="utf-8") != text]
        if stale:
            print(f"out of date: {', '.join(stale)}; run python examples/data/make_tool_tickets.py", file=sys.stderr)
            return 1
        return 0
    OUT.mkdir(exist_ok=True)
    for name, text in files.items():
        (OUT / f"{name}.jsonl").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
