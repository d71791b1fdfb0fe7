"""Generate the bundled ``support_tickets`` demo dataset used by the quickstart.

It writes a small synthetic support-ticket classification dataset:

    examples/data/support_tickets/train.jsonl    (320 rows)
    examples/data/support_tickets/heldout.jsonl  ( 80 rows)

Each line is one JSON object, keys in this order::

    {"id": "t0001", "prompt": "<ticket text>", "completion": "<category>", "lang": "en"|"ko"}

The five categories are ``billing``, ``technical``, ``account``, ``shipping`` and
``refund`` (see ``support_tickets/README.md`` for their definitions). The classes are
balanced in each split and about 20% of the rows of each split are Korean.

Tickets are built from many hand-written templates per category and language, with
slots (order numbers, amounts, dates, products, ...) filled from pools, optional
greetings / sign-offs / asides, and occasional typos. The held-out split measures
generalisation: per category, a fixed set of 7 English and 3 Korean templates
(``HELDOUT_TEMPLATES``) is reserved for it, and training rows never use those templates,
so a held-out ticket is never just a training ticket with a different greeting or order
number. Everything is drawn from a single
``random.Random(SEED)``, so the output is deterministic: rerunning the script reproduces
both files byte for byte. Only the standard library is used.

Run it from the repository root::

    python examples/data/make_support_tickets.py           # (re)write the two files
    python examples/data/make_support_tickets.py --check   # verify the files are up to date
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path

SEED = 20240521
OUT_DIR = Path(__file__).resolve().parent / "support_tickets"
CATEGORIES = ("billing", "technical", "account", "shipping", "refund")

# Rows per category in each split: (English, Korean). 5 categories x 64 = 320 train rows,
# 5 x 16 = 80 held-out rows; Korean is 13/64 (20.3%) and 3/16 (18.8%) of each category.
SPLITS = {
    "train": (51, 13),
    "heldout": (13, 3),
}
MAX_WORDS = 60  # training runs on CPU in the quickstart: keep tickets short

# ---------------------------------------------------------------------------------------
# Slot pools
# ---------------------------------------------------------------------------------------

PRODUCTS = [
    "Bluetooth speaker", "blender", "standing desk", "smart lamp", "yoga mat", "phone case",
    "backpack", "coffee grinder", "air purifier", "mechanical keyboard", "smart watch",
    "desk chair", "robot vacuum", "electric kettle", "webcam",
]
PRODUCTS_KO = [
    "무선 이어폰", "블렌더", "스탠딩 책상", "스마트 조명", "요가 매트", "휴대폰 케이스", "백팩",
    "커피 그라인더", "공기청정기", "기계식 키보드", "스마트워치", "사무용 의자", "로봇청소기",
    "전기포트", "웹캠",
]
GADGETS = [
    "smart lamp", "smart watch", "robot vacuum", "air purifier", "Bluetooth speaker", "webcam",
    "smart scale", "fitness tracker", "video doorbell",
]
GADGETS_KO = [
    "스마트 조명", "스마트워치", "로봇청소기", "공기청정기", "블루투스 스피커", "웹캠", "스마트 체중계",
    "스마트밴드", "스마트 초인종",
]
PLANS = ["Premium", "Plus", "Basic", "Family", "Pro"]
PLANS_KO = ["프리미엄", "플러스", "베이직", "패밀리", "프로"]
MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
]
MONTHS_SHORT = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
CARRIERS = ["UPS", "FedEx", "DHL", "USPS", "Royal Mail", "Canada Post"]
CARRIERS_KO = ["CJ대한통운", "한진택배", "롯데택배", "우체국택배", "로젠택배"]
CITIES = [
    "Denver", "Austin", "Toronto", "Manchester", "Seattle", "Chicago", "Dublin", "Melbourne",
    "Leeds", "Portland", "Vancouver", "Boston",
]
DEVICES = [
    "iPhone 13", "iPhone 15 Pro", "Galaxy S23", "Pixel 7", "iPad Air", "OnePlus 11",
    "Galaxy A52", "Pixel 8a", "iPhone SE",
]
ERRORS = [
    "error 503", "ERR_CONNECTION_RESET", "error code 1004", "\"Unexpected error (E-217)\"",
    "\"Network request failed\"", "error 0x80004005", "a 500 error", "\"Oops! Code 42\"",
    "error AUTH-09",
]
FEATURES = [
    "the cart", "my order history", "the settings page", "search", "the dashboard",
    "the camera screen", "checkout", "my wishlist", "the messages tab",
]
FEATURES_KO = ["장바구니", "설정 화면", "주문 내역", "검색 화면", "마이페이지", "위시리스트", "메시지함"]
NAMES = ["Sarah", "Mike", "J. Park", "Priya", "Tom", "Ana", "David K.", "Lena", "Chris", "Fatima",
         "Marco", "Emily R."]
EMAIL_USERS = ["jlee", "m.smith", "sarah.k", "tom_r", "priya.n", "dkim", "ana.silva", "chris88"]
EMAIL_DOMAINS = ["example.com", "example.net", "example.org", "mail.example.com"]  # reserved (RFC 2606)
WHEN = [
    "yesterday", "last Monday", "three days ago", "last week", "over a week ago",
    "two weeks ago", "on Friday",
]


def make_slots(rng: random.Random) -> dict[str, str]:
    """Draw one value for every slot (always all of them, in a fixed order)."""
    month = rng.randrange(12)
    day = rng.randint(1, 28)
    date = rng.choice([
        f"{MONTHS[month]} {day}",
        f"{MONTHS_SHORT[month]} {day}",
        f"{month + 1}/{day}",
        f"the {day}{'th' if 10 <= day <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(day % 10, 'th')}",
    ])
    cents = rng.choice(["00", "99", "49", "95", "50"])
    amount_a = rng.randint(5, 299)
    amount_b = amount_a + rng.randint(3, 60)
    won_a = rng.randint(5, 300) * 1000
    won_b = won_a + rng.randint(2, 40) * 1000
    order = rng.choice([
        f"#{rng.randint(100000, 999999)}",
        f"#{rng.randint(100000, 999999)}",
        f"ORD-{rng.randint(10000, 99999)}",
    ])
    tracking = rng.choice([
        "1Z" + "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ0123456789") for _ in range(10)),
        "".join(rng.choice("0123456789") for _ in range(12)),
    ])
    when = rng.choice(WHEN)
    if when == "on Friday" and rng.random() < 0.5:
        when = f"on {date}"
    return {
        "product": rng.choice(PRODUCTS),
        "product_ko": rng.choice(PRODUCTS_KO),
        "gadget": rng.choice(GADGETS),
        "gadget_ko": rng.choice(GADGETS_KO),
        "plan": rng.choice(PLANS),
        "plan_ko": rng.choice(PLANS_KO),
        "date": date,
        "date_ko": f"{month + 1}월 {day}일",
        "when": when,
        "amount": f"${amount_a}.{cents}",
        "amount2": f"${amount_b}.{cents}",
        "amount_ko": f"{won_a:,}원",
        "amount2_ko": f"{won_b:,}원",
        "order": order,
        "tracking": tracking,
        "carrier": rng.choice(CARRIERS),
        "carrier_ko": rng.choice(CARRIERS_KO),
        "city": rng.choice(CITIES),
        "days": str(rng.randint(3, 15)),
        "device": rng.choice(DEVICES),
        "error": rng.choice(ERRORS),
        "feature": rng.choice(FEATURES),
        "feature_ko": rng.choice(FEATURES_KO),
        "version": f"{rng.randint(3, 5)}.{rng.randint(0, 12)}.{rng.randint(0, 9)}",
        "email": f"{rng.choice(EMAIL_USERS)}{rng.choice(['', '', str(rng.randint(1, 99))])}"
                 f"@{rng.choice(EMAIL_DOMAINS)}",
        "last4": f"{rng.randint(0, 9999):04d}",
        "name": rng.choice(NAMES),
        "years": str(rng.randint(2, 9)),
    }


# ---------------------------------------------------------------------------------------
# Templates. Billing = charges/invoices/payment methods/price questions (no money back
# asked); refund = the customer wants money back (returns, reimbursement, reversal).
# Shipping = where/when/how a parcel is delivered; technical = the app or device misbehaves;
# account = identity, sign-in credentials, profile settings, deletion, 2FA.
# ---------------------------------------------------------------------------------------

TEMPLATES_EN: dict[str, list[str]] = {
    "billing": [
        "Why was I charged {amount} on {date}? I don't recognise this charge at all.",
        "I was charged twice for my {plan} subscription this month. Can someone look into why this happened?",
        "Can you send me an invoice for order {order}? I need it for my company's expense report.",
        "hi, how do I update the card on file? my old one ending in {last4} expired",
        "The price of the {plan} plan went up from {amount} to {amount2} without any notice. Is this a mistake?",
        "My payment keeps getting declined even though my card works everywhere else. I've tried three times now.",
        "I need our VAT number added to my invoices going forward. Our finance team won't accept them otherwise.",
        "what is this {amount} charge from you guys?? i never signed up for anything",
        "Could you tell me when my next payment is due and how much it will be? I'm on the {plan} plan.",
        "I'd like to switch from monthly to yearly payments. Will I be charged the difference straight away?",
        "Your website charged my card {amount} but the order page says {amount2}. Which one is correct?",
        "Is it possible to pay with PayPal instead of a credit card? I don't see the option at checkout.",
        "I got an email saying my payment failed, but my bank shows the money was taken. What's going on?",
        "Please remove my old Visa ending {last4} from my saved payment methods. I don't want it stored anymore.",
        "The receipt for order {order} shows the wrong company name. Can you reissue it with the correct details?",
        "I was told the {plan} plan would cost {amount} a month but I'm being charged {amount2}. Please explain.",
        "Do you offer a student discount on the {plan} plan? The current price is a bit much for me.",
        "I entered a promo code at checkout but the total for order {order} still came to {amount}. Did the discount not apply?",
        "Why is there a {amount} pending authorization on my card when I haven't ordered anything since {date}?",
        "I need copies of all invoices from last year for tax purposes. Is there somewhere I can download them?",
        "My company wants to pay by bank transfer instead of card. Is that possible for annual subscriptions?",
        "Charged {amount} again. Third month in a row the amount is different. Explain please.",
        "I'm confused about the pro-rated charge after I upgraded to {plan} on {date}. Can you break it down for me?",
        "Can I split the payment for the {product} into instalments? I saw something about that on the product page.",
        "The sales tax on my invoice seems way too high for my state. Could someone double check the calculation?",
        "Ok so I was charged in euros even though I live in the US, and now my bank added a foreign transaction fee on top. Why is my currency set to EUR?",
        "The trial was supposed to be free until {date} but I've already been charged {amount}. Why did this happen?",
        "How do I change the billing address linked to my card? It still shows my old apartment.",
        "Where can I see my payment history? I want to check how much I've paid for {plan} so far this year.",
        "Quick question: does the {amount} on my statement include tax or is that added later?",
        "Why did my monthly price go up?",
        "Need a receipt for {order}.",
    ],
    "technical": [
        "The app crashes every time I open {feature}. I'm on my {device}, app version {version}.",
        "Getting {error} when I try to log in, even though my password is definitely correct. It started after the last update.",
        "app keeps freezing on the loading screen. reinstalled twice, still nothing",
        "Since updating to {version} the app is extremely slow. It takes almost a minute to load {feature}.",
        "I can't upload photos, it just says {error} and gives up. Tried on wifi and on mobile data.",
        "Your website won't load in Firefox at all, just a blank white page. Chrome works fine though.",
        "Notifications stopped working completely after the update on {date}. I've checked my phone settings and they are turned on.",
        "When I tap the save button nothing happens. No error, no confirmation, my changes just disappear.",
        "The login screen shows {error} and then kicks me back to the start. This happens on my {device} but not on my laptop.",
        "The search bar returns no results for anything, even products I know you sell. Is search broken?",
        "Seriously, the app has crashed FIVE times today. I can't get anything done. Fix it please.",
        "I'm seeing a spinning wheel forever on {feature}. Cleared cache, logged out and back in, nothing helps.",
        "The dark mode setting resets itself every time I restart the app. Minor but annoying.",
        "Sync between my phone and my laptop is broken. Changes I make on one don't show up on the other anymore.",
        "The {gadget} won't pair with the app over Bluetooth. It shows up for a second and then disappears from the list.",
        "Checkout page throws {error} when I click Pay. I've tried two different browsers already.",
        "Battery drain is insane since version {version}, the app is using 40% of my battery in the background.",
        "The text on {feature} overlaps and some buttons are cut off on my {device}. Screenshot attached.",
        "I keep getting logged out every few minutes, it says my session expired even though I just signed in.",
        "The export to CSV feature produces an empty file. It worked fine last month.",
        "Videos in the app stutter and buffer constantly, even on a fast connection where everything else plays perfectly.",
        "The firmware update for my {gadget} failed halfway through and now it only blinks red. What do I do?",
        "The app won't even install on my {device}, the store says it's not compatible with this device.",
        "Every time I switch tabs the page reloads and I lose what I typed. Pretty frustrating tbh.",
        "Your API has returned {error} on every request since {date}. Nothing changed on our side.",
        "I get a 'something went wrong' message whenever I try to open {feature}. It's been like this for days.",
        "The keyboard doesn't appear when I tap the message box in chat. I have to restart the app each time.",
        "The app is stuck on an old version and the update button doesn't do anything. Currently on {version}.",
        "The map in the store locator never loads, just a grey box. Location permission is on.",
        "After the latest update the {gadget} companion app shows all readings as zero. Is this a known bug?",
        "App won't open at all.",
        "{error} again. Every single time.",
    ],
    "account": [
        "I forgot my password and the reset email never arrives. I've checked spam too.",
        "How do I change the email address on my profile? I no longer use {email}.",
        "Please delete my account and all my personal data. I don't want to use your service anymore.",
        "I need to update my name, I got married and my surname has changed.",
        "I got a new phone and lost access to my authenticator app. How can I get back in without the 2FA code?",
        "how do i turn on two factor authentication? cant find it anywhere in settings",
        "Someone changed my password without my permission. I think I've been hacked, please lock my profile.",
        "Can I change my username? The one I picked years ago is embarrassing lol.",
        "The password reset link says it has expired, even though I clicked it within a minute.",
        "I accidentally signed up twice, once with {email} and once with my work address. Can the two profiles be merged?",
        "Could you remove my phone number from my profile? I'd rather you only had my email.",
        "How do I permanently remove my profile? I can't find a delete option anywhere.",
        "My date of birth is wrong on my profile and it won't let me edit it myself. It should be {date_en_birth}.",
        "The sign-in verification code goes to my old number, which I don't have anymore. How do I update it?",
        "I'm locked out after too many wrong password attempts. How long do I have to wait?",
        "Can I add my partner as a second user under my membership? We live in the same household.",
        "change my email to {email} please",
        "I never created an account with you but I keep getting emails addressed to me. Please erase whatever data you hold.",
        "Where is the setting to change my profile language from English to Spanish?",
        "How do I download a copy of all the personal data you have on me? This is a GDPR request.",
        "I reset my password {when} and now the new one doesn't work either. Can you help me get back in?",
        "How do I make my profile private so other users can't see my reviews?",
        "I got an email saying my email address was changed, but I didn't do that! Please help, I can't sign in now.",
        "I want to deactivate my profile temporarily rather than delete everything. Is that possible?",
        "Which email is my login linked to? I have three addresses and can't remember which one I used.",
        "I'd like to switch from signing in with Facebook to a normal email and password. How?",
        "My 2FA recovery codes were lost when my laptop died. Is there another way to verify it's me?",
        "Please update the phone number on my profile, the old one ending in {last4} is disconnected.",
        "New security question please, I can't remember the answer to the one I set up years ago.",
        "My username shows as {email} publicly on reviews. How do I change the display name?",
        "Can't reset my password, help.",
        "How do I delete my profile?",
    ],
    "shipping": [
        "Where is my order {order}? It was supposed to arrive {when} and I still have nothing.",
        "Tracking number {tracking} hasn't updated in {days} days. Is my package lost?",
        "Can I change the delivery address for order {order}? I'm moving to {city} this week and it's already on its way.",
        "tracking says delivered but there's nothing at my door. checked with the neighbours too",
        "How long does delivery usually take to {city}? I ordered the {product} on {date}.",
        "My parcel has been stuck in customs for over a week. Is there anything I need to do?",
        "Order {order} still says 'processing' after {days} days. When will it actually be sent out?",
        "The courier left a note saying they couldn't deliver. Can I pick it up somewhere or arrange another attempt?",
        "I got a tracking link but it says the number is invalid. Could you send me the correct one?",
        "It's been two weeks!!! Where is my {product}? This is ridiculous.",
        "Can you tell me which courier is handling order {order}? The confirmation email didn't say.",
        "My package was delivered to the wrong house, two streets away. Can you sort this out with {carrier}?",
        "I need the {product} by {date} for a birthday. Will it get here in time if it went out yesterday?",
        "Only half my order arrived. The {product} wasn't in the box, is it coming separately?",
        "{carrier} says the parcel was returned to sender. Why? My address was correct.",
        "Is it possible to hold my delivery until next week? I'm away and no one will be home to sign for it.",
        "The estimated delivery date keeps moving back. First it was {date}, now it's a week later. What's happening?",
        "Do you deliver to PO boxes? I want to place an order but need to know first.",
        "hey, any update on {order}? been waiting a while",
        "Tracking shows my package went to {city} instead of coming to me. Is it being rerouted?",
        "The box arrived completely crushed and wet. The contents seem ok but I wanted to report it to you and the courier.",
        "My order was marked as dispatched on {date} but {carrier} has no record of it. Can you check?",
        "I typed my apartment number wrong on order {order}. It's flat 4B, not 48. Can you fix it before it arrives?",
        "Can I upgrade to express delivery after already placing order {order}?",
        "It has said 'out for delivery' since this morning and it's now 9pm. Will it still come today?",
        "Ordered with next-day delivery on {date} and it's now been {days} days with no sign of it. Where is it?",
        "Please confirm the address you have for order {order}, I'm worried it's going to my old place in {city}.",
        "Package {tracking} has been sitting at the local depot since {date}. Why isn't it moving?",
        "Do you send orders abroad? I'd like the {product} delivered to my sister in {city}.",
        "The {carrier} driver marked my parcel as 'recipient not available' but I was home all day. When will they try again?",
        "Where is my package??",
        "Any tracking for {order} yet?",
    ],
    "refund": [
        "I'd like my money back for order {order}. The {product} stopped working after two days.",
        "I returned the {product} on {date} but haven't received my money yet. How long does it take?",
        "Please cancel my {plan} subscription and reimburse this month's {amount}, I didn't use it at all.",
        "How do I return an item? The {product} turned out to be the wrong model and I'd like my money back.",
        "I want a refund. The product is nothing like the pictures.",
        "You charged me twice for order {order}, please send back the extra {amount}.",
        "Can I send back the {product}? It's unopened and I bought it {when}. I'd want the full price back.",
        "The package never arrived and I've given up waiting. I just want the {amount} back on my card.",
        "i cancelled within the trial period but still got charged {amount}. want it reversed",
        "Return label please for order {order}. The {product} arrived broken and I'd rather have my money back than a replacement.",
        "It's been {days} days since you approved my return and the money still isn't in my bank. When will it show up?",
        "I'd like to cancel order {order} before it goes out and get the full amount back.",
        "Your annual plan auto-renewed for {amount} and I forgot to cancel. Is there any way to get that money returned?",
        "Absolutely unacceptable quality. I'm sending this {product} back and I expect a full reimbursement.",
        "Is it too late to return something I bought on {date}? I still have the receipt and want my money back.",
        "The {product} I ordered was out of stock and you cancelled the order, but the {amount} hasn't come back to my card.",
        "Could you send the {amount} back to my PayPal instead of the original card? That card is closed now.",
        "I was promised {amount} back as compensation for the late delivery. Still waiting on it.",
        "Please process the return for order {order}. I dropped it off at the post office on {date} and have the receipt.",
        "My kid bought a {plan} upgrade by accident. Can you reverse the purchase and give me the money back?",
        "Cancelled my subscription {when}, I would like the unused part of the year reimbursed please.",
        "I received store credit instead of my money. I never asked for credit, I want it back on my card.",
        "The {product} has a 30-day money-back guarantee, right? I'd like to use it, it's just not for me.",
        "I bought two by mistake. Can I send one back and get {amount} returned?",
        "The {product} was a gift and they already have one. Can I return it for cash back rather than an exchange?",
        "Your returns portal says order {order} is not eligible. Why? It arrived {when} and it's faulty. I want my money back.",
        "Where's my refund?? Sent it back weeks ago.",
        "I'm disputing this with my bank unless you return my {amount} by Friday. The item was defective.",
        "Please also reimburse the return postage. The item was faulty, so I shouldn't have to pay {amount} to send it back.",
        "Partial refund for the damaged {product}? I'll keep it if you give me some of the money back, otherwise it goes back.",
        "I just want my money back.",
        "Returning the {product}. How do I get paid back?",
    ],
}

TEMPLATES_KO: dict[str, list[str]] = {
    "billing": [
        "{date_ko}에 {amount_ko}이 결제됐는데 무슨 내역인지 모르겠어요. 확인 부탁드립니다.",
        "이번 달 {plan_ko} 요금제 요금이 두 번 청구된 것 같아요. 왜 그런 건지 알려주세요.",
        "주문번호 {order} 세금계산서 발행 가능할까요? 회사 경비 처리해야 해서요.",
        "등록된 카드가 만료돼서 새 카드로 바꾸고 싶은데 어디서 변경하나요?",
        "결제가 계속 실패해요. 카드는 다른 데서 잘 되는데 여기서만 안 되네요.",
        "{plan_ko} 요금제 가격이 갑자기 {amount_ko}에서 {amount2_ko}으로 올랐네요. 공지도 없었는데 맞는 건가요?",
        "영수증을 다시 받을 수 있을까요? 메일로 온 걸 실수로 지워버렸어요.",
        "월 결제에서 연 결제로 바꾸면 차액이 바로 청구되나요?",
        "무료 체험이라고 해서 가입했는데 {amount_ko}이 빠져나갔어요. 어떻게 된 건지 설명 좀 해주세요",
        "카카오페이나 네이버페이로도 결제 가능한가요? 결제 화면에 카드만 보여서요.",
        "끝자리 {last4} 카드 정보 삭제해 주세요. 더 이상 저장해두고 싶지 않습니다.",
        "다음 결제일이 언제인지, 금액은 얼마인지 알 수 있을까요? 지금 {plan_ko} 요금제 쓰고 있어요.",
    ],
    "technical": [
        "{feature_ko} 들어가기만 하면 앱이 꺼져요. {device} 쓰고 있고 버전은 {version}입니다.",
        "로그인하려고 하면 {error} 오류가 뜨면서 진행이 안 돼요. 비밀번호는 맞게 입력했습니다.",
        "업데이트 이후로 앱이 너무 느려졌어요ㅠㅠ 화면 하나 넘어가는 데 몇 초씩 걸려요.",
        "사진 업로드가 안 됩니다. 계속 {error} 메시지만 나와요.",
        "알림이 하나도 안 와요. 폰 설정에서 알림은 다 켜놨는데 {date_ko} 업데이트 이후부터 그러네요.",
        "앱 설치가 안 돼요. 스토어에서 기기와 호환되지 않는다고 나옵니다.",
        "결제 버튼 누르면 화면이 하얗게 변하고 아무 반응이 없어요. 크롬, 사파리 둘 다 그래요.",
        "{gadget_ko} 블루투스 연결이 계속 끊겨요. 앱에서 기기가 잠깐 보였다가 사라집니다.",
        "앱 실행하면 로딩 화면에서 멈춰요. 삭제하고 다시 깔아봐도 똑같아요.",
        "저장 버튼을 눌러도 저장이 안 되고 수정한 내용이 다 날아가요. 벌써 세 번째예요.",
        "휴대폰이랑 PC 동기화가 안 돼요. 폰에서 바꾼 게 PC에 반영이 안 됩니다.",
        "{feature_ko} 화면 글자가 겹쳐 보이고 버튼이 잘려요. {device}에서만 그런 것 같아요.",
    ],
    "account": [
        "비밀번호를 잊어버렸는데 재설정 메일이 안 와요. 스팸함도 확인했어요.",
        "가입할 때 쓴 이메일을 {email}에서 다른 주소로 바꾸고 싶어요. 어떻게 하나요?",
        "회원 탈퇴하고 싶습니다. 개인정보도 전부 삭제해 주세요.",
        "휴대폰을 바꿨더니 2단계 인증 앱을 쓸 수가 없어요. 인증 없이 로그인할 방법이 있을까요?",
        "결혼해서 이름이 바뀌었는데 프로필 이름 변경은 어디서 하나요?",
        "제가 바꾸지 않았는데 비밀번호가 변경됐다는 메일을 받았어요. 해킹당한 것 같으니 계정 좀 잠가주세요.",
        "비밀번호를 여러 번 틀려서 잠겼어요. 얼마나 기다려야 다시 로그인할 수 있나요?",
        "아이디 변경 가능한가요? 예전에 만든 거라 좀 바꾸고 싶어서요.",
        "로그인 인증번호가 예전 번호로 가요. 그 번호는 이제 안 쓰는데 어떻게 바꾸죠?",
        "실수로 이메일 두 개로 가입했어요. 하나로 합칠 수 있을까요?",
        "2단계 인증 설정하는 메뉴를 못 찾겠어요. 설정 어디에 있나요?",
        "프로필에 등록된 전화번호 끝자리 {last4} 번호를 새 번호로 바꾸고 싶습니다.",
    ],
    "shipping": [
        "주문번호 {order} 언제 도착하나요? {date_ko} 도착 예정이었는데 아직 안 왔어요.",
        "송장번호 {tracking} 조회하면 {days}일째 그대로예요. 혹시 분실된 건가요?",
        "배송 완료라고 뜨는데 물건이 없어요. 경비실이랑 이웃집도 다 확인했습니다.",
        "이사를 가게 돼서 배송지를 변경하고 싶어요. 이미 출고된 주문({order})도 바꿀 수 있나요?",
        "{carrier_ko}에서 주소 불명으로 반송됐다고 하네요. 주소 제대로 적었는데 왜 그런 거죠?",
        "주문한 지 일주일이 넘었는데 아직도 상품 준비중이에요. 언제 발송되나요?",
        "{product_ko} 주문했는데 배송 조회가 안 돼요. 송장번호가 잘못된 것 같아요.",
        "택배가 옆 동으로 잘못 배달됐어요. {carrier_ko}에 확인 좀 해주실 수 있나요?",
        "아니 도대체 언제 와요?? {days}일째 기다리고 있습니다.",
        "상자가 다 찌그러진 채로 왔어요. 일단 내용물은 괜찮은데 택배사에 좀 알려주세요.",
        "{date_ko}까지 꼭 받아야 하는 선물인데 그 전에 도착할 수 있을까요?",
        "{carrier_ko} 기사님이 부재중이라고 하셨는데 저 하루 종일 집에 있었어요. 재배송은 언제 되나요?",
    ],
    "refund": [
        "주문번호 {order} 환불 요청합니다. {product_ko} 제품이 이틀 만에 고장 났어요.",
        "{date_ko}에 반품 보냈는데 아직 돈이 안 들어왔어요. 보통 며칠 걸리나요?",
        "{plan_ko} 구독 취소하고 이번 달 요금 돌려받고 싶어요. 한 번도 안 썼어요.",
        "사이즈가 안 맞아서 반품하고 싶습니다. 교환 말고 돈으로 돌려받고 싶어요.",
        "같은 주문이 두 번 결제됐어요. 중복 결제된 {amount_ko} 돌려주세요.",
        "배송이 너무 늦어서 그냥 주문 취소할게요. 결제한 금액 돌려주세요.",
        "사진이랑 완전히 다른 제품이 왔네요. 반품할 테니 전액 환불해 주세요.",
        "연간 구독이 자동 갱신돼서 {amount_ko} 결제됐는데 취소하고 돌려받을 수 있을까요?",
        "반품 승인됐다고 문자 받은 지 {days}일 지났는데 카드사에 아직 안 들어왔어요.",
        "포장도 안 뜯은 {product_ko} 반품 가능한가요? {date_ko}에 샀고 결제 취소 원합니다.",
        "불량품이라 반품하는 건데 반품 택배비를 제가 내는 건 아닌 것 같아요. 택배비까지 돌려주세요.",
        "아이가 실수로 {plan_ko} 요금제를 결제했어요. 결제 취소하고 {amount_ko} 돌려받을 수 있나요?",
    ],
}

# ---------------------------------------------------------------------------------------
# Held-out templates. The held-out split measures generalisation, so its tickets come only
# from templates that no training ticket uses: per category, the 7 English and 3 Korean
# templates at these (0-based) indices of TEMPLATES_EN / TEMPLATES_KO are reserved for
# `heldout`, and `train` uses the other 25 English and 9 Korean ones. The indices are a
# fixed, hand-picked list (no randomness involved), chosen so that
#   - each reserved Korean template is a translation of a reserved English one, and no
#     Korean training template translates a reserved English one (no cross-lingual leak);
#   - close paraphrases are reserved together (e.g. billing "payment declined" / "payment
#     failed but money taken"; account "password changed" / "email changed, I didn't do
#     it"), so a held-out ticket has no near-twin in training;
#   - the reserved templates still cover varied requests, lengths and tones, and (almost)
#     never contain their own label word.
# If you reorder or insert templates above, update these indices. check() asserts that no
# held-out row's template is used by any training row.
# ---------------------------------------------------------------------------------------

HELDOUT_TEMPLATES: dict[str, dict[str, tuple[int, ...]]] = {
    # declined / failed payment, PayPal / bank transfer, sales tax, free-trial charge
    "billing": {"en": (5, 11, 12, 20, 24, 26, 29), "ko": (4, 8, 9)},
    # notifications, save button, sync, battery, CSV export, firmware, page reloads
    "technical": {"en": (6, 7, 13, 16, 19, 21, 23), "ko": (4, 9, 10)},
    # name change, hijacked password / email, merge profiles, birth date, privacy, Facebook
    "account": {"en": (3, 6, 9, 12, 21, 22, 25), "ko": (4, 5, 9)},
    # customs, wrong house, partial order, returned to sender, PO boxes, crushed box,
    # still 'out for delivery' at 9pm
    "shipping": {"en": (5, 11, 13, 14, 17, 20, 24), "ko": (4, 7, 9)},
    # charged twice, out of stock, PayPal, compensation, kid's purchase, store credit, postage
    "refund": {"en": (5, 15, 16, 17, 19, 21, 28), "ko": (4, 10, 11)},
}
N_HELDOUT_TEMPLATES = {"en": 7, "ko": 3}


def split_templates(split: str, category: str, lang: str) -> list[str]:
    """The templates one split may use for one category and language (in list order)."""
    templates = (TEMPLATES_EN if lang == "en" else TEMPLATES_KO)[category]
    reserved = HELDOUT_TEMPLATES[category][lang]
    assert len(set(reserved)) == len(reserved) == N_HELDOUT_TEMPLATES[lang], (category, lang)
    assert all(0 <= i < len(templates) for i in reserved), (category, lang, reserved)
    if split == "heldout":
        return [t for i, t in enumerate(templates) if i in reserved]
    return [t for i, t in enumerate(templates) if i not in reserved]


GREETINGS_EN = [
    "Hi,", "Hello,", "Hi there,", "Hey,", "Good morning,", "Dear support team,", "Hello support,",
    "To whom it may concern,", "Hi team,", "Hiya,", "Hello!", "Good afternoon.",
]
SIGNOFFS_EN = [
    "Thanks.", "Thanks in advance!", "Regards, {name}", "Cheers", "Thank you for your help.",
    "- {name}", "Best, {name}", "Please reply ASAP.", "thx", "Kind regards, {name}",
]
ASIDES_EN = [
    "I've been a customer for {years} years.", "This is my second email about this.",
    "Please get back to me soon.", "I'm really not happy about this.",
    "Sorry if this is the wrong place to ask.", "Any help appreciated.",
    "I already tried the help center, no luck.", "Not impressed so far.",
    "I'd appreciate a quick answer.",
]
GREETINGS_KO = ["안녕하세요.", "안녕하세요~", "수고하십니다.", "문의드립니다.", "안녕하세요, 문의 하나 드릴게요."]
SIGNOFFS_KO = ["감사합니다.", "빠른 답변 부탁드립니다.", "확인 부탁드려요.", "수고하세요.", "답변 기다리겠습니다."]
ASIDES_KO = ["벌써 두 번째 문의입니다.", "너무 답답하네요.", "급해서요ㅠ", "고객센터 전화는 계속 안 받으시네요."]

COMMON_MISSPELLINGS = {
    "received": "recieved", "definitely": "definately", "until": "untill", "address": "adress",
    "separately": "seperately", "because": "becuase", "really": "realy", "which": "wich",
    "anything": "anythng", "anymore": "any more", "receipt": "reciept", "immediately": "immediatly",
    "weeks": "weks", "password": "pasword", "delivery": "delivry", "subscription": "subscripton",
    "working": "workin", "already": "allready", "the": "teh",
}


def add_typo(text: str, rng: random.Random) -> str:
    """Introduce one realistic typo into an alphabetic word of an English ticket."""
    words = text.split(" ")
    known = [i for i, w in enumerate(words) if w.strip(".,!?").lower() in COMMON_MISSPELLINGS]
    if known and rng.random() < 0.5:
        i = rng.choice(known)
        core = words[i].strip(".,!?")
        wrong = COMMON_MISSPELLINGS[core.lower()]
        if core[0].isupper():
            wrong = wrong[0].upper() + wrong[1:]
        words[i] = words[i].replace(core, wrong, 1)
        return " ".join(words)
    candidates = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha() and w.islower()]
    if not candidates:
        return text
    i = rng.choice(candidates)
    w = words[i]
    kind = rng.randrange(3)
    j = rng.randint(1, len(w) - 3)
    if kind == 0:  # swap two neighbouring letters
        w = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    elif kind == 1:  # drop a letter
        w = w[:j] + w[j + 1:]
    else:  # double a letter
        w = w[:j] + w[j] + w[j:]
    words[i] = w
    return " ".join(words)


def render(template: str, lang: str, rng: random.Random) -> str:
    """Fill the slots of one template and dress it up as a customer would write it."""
    slots = make_slots(rng)
    slots["date_en_birth"] = f"{rng.choice(MONTHS)} {rng.randint(1, 28)}, {rng.randint(1955, 2004)}"
    body = template.format(**slots)
    if lang == "ko":
        parts = [body]
        if rng.random() < 0.12:
            parts.append(rng.choice(ASIDES_KO))
        if rng.random() < 0.45:
            parts.insert(0, rng.choice(GREETINGS_KO))
        if rng.random() < 0.45:
            parts.append(rng.choice(SIGNOFFS_KO))
        for k in range(1, len(parts)):
            if parts[k - 1][-1] not in ".!?~ㅠ":
                parts[k - 1] += "."
        return " ".join(parts)

    parts = [body]
    if rng.random() < 0.15:
        parts.append(rng.choice(ASIDES_EN).format(**slots))
    if rng.random() < 0.3:
        parts.append(rng.choice(SIGNOFFS_EN).format(**slots))
    starts_with_greeting = body.lower().startswith(("hi", "hello", "hey"))
    if not starts_with_greeting and rng.random() < 0.35:
        greeting = rng.choice(GREETINGS_EN)
        first = body.split(" ", 1)[0]
        # "Hi, the app..." rather than "Hi, The app..." (but keep "I", names, codes).
        if greeting.endswith(",") and not template.startswith("{") and first[1:].islower() \
                and not first.startswith(("I'", "I ")):
            parts[0] = body[0].lower() + body[1:]
        parts.insert(0, greeting)
    # A terse template may end without punctuation: close the sentence before adding more.
    for k in range(1, len(parts)):
        if parts[k - 1][-1] not in ".!?," and parts[k][0].isupper():
            parts[k - 1] += "."
    text = " ".join(parts)
    r = rng.random()
    if r < 0.12:
        text = add_typo(text, rng)
        if rng.random() < 0.2:
            text = add_typo(text, rng)
    elif r < 0.19:  # terse writer: all lower case, no final full stop
        text = text.lower().rstrip(".")
    return text


def norm(text: str) -> str:
    """Key for duplicate detection: case- and whitespace-insensitive."""
    return " ".join(text.lower().split())


Splits = dict[str, list[dict[str, str]]]


def build(rng: random.Random) -> tuple[Splits, dict[str, list[str]]]:
    """Make both splits. Also returns, per split, the template each row was made from."""
    seen: set[str] = set()
    splits: Splits = {}
    sources: dict[str, list[str]] = {}
    for split, (n_en, n_ko) in SPLITS.items():
        rows: list[tuple[dict[str, str], str]] = []
        for category in CATEGORIES:
            for lang, n in (("en", n_en), ("ko", n_ko)):
                templates = split_templates(split, category, lang)
                # Walk this split's templates in a fresh random order, cycling, so every
                # template is used about equally often within the split.
                order: list[str] = []
                for _ in range(n):
                    if not order:
                        order = list(templates)
                        rng.shuffle(order)
                    template = order.pop()
                    for _attempt in range(100):
                        prompt = render(template, lang, rng)
                        if norm(prompt) not in seen and len(prompt.split()) <= MAX_WORDS:
                            break
                    else:
                        raise RuntimeError(f"could not make a new ticket from {template!r}")
                    seen.add(norm(prompt))
                    rows.append(({"prompt": prompt, "completion": category, "lang": lang},
                                 template))
        rng.shuffle(rows)
        splits[split] = [row for row, _ in rows]
        sources[split] = [template for _, template in rows]

    # Ids are unique across both files: train gets t0001.., held-out continues after it.
    next_id = 1
    for split in SPLITS:
        numbered = []
        for row in splits[split]:
            numbered.append({"id": f"t{next_id:04d}", **row})
            next_id += 1
        splits[split] = numbered
    return splits, sources


def check(splits: Splits, sources: dict[str, list[str]]) -> None:
    train_prompts = {r["prompt"] for r in splits["train"]}
    train_norm = {norm(p) for p in train_prompts}
    for row in splits["heldout"]:
        assert row["prompt"] not in train_prompts, f"held-out row duplicates train: {row}"
        assert norm(row["prompt"]) not in train_norm, f"held-out row near-duplicates train: {row}"
    # Held-out tickets come from templates that no training ticket uses (compared by
    # template text, so this also holds if the same text appeared at two places).
    train_templates = set(sources["train"])
    for row, template in zip(splits["heldout"], sources["heldout"], strict=True):
        assert template not in train_templates, \
            f"held-out row uses a training template {template!r}: {row}"
    for split, rows in splits.items():
        for row, template in zip(rows, sources[split], strict=True):
            assert template in split_templates(split, row["completion"], row["lang"]), \
                f"{split} row made from a template outside its split: {row}"
    ids = [r["id"] for rows in splits.values() for r in rows]
    assert len(ids) == len(set(ids)), "ids are not unique across files"
    for split, rows in splits.items():
        prompts = [norm(r["prompt"]) for r in rows]
        assert len(prompts) == len(set(prompts)), f"duplicate prompts within {split}"
        n_en, n_ko = SPLITS[split]
        counts = Counter((r["completion"], r["lang"]) for r in rows)
        for category in CATEGORIES:
            assert counts[(category, "en")] == n_en and counts[(category, "ko")] == n_ko, counts
        for r in rows:
            assert list(r) == ["id", "prompt", "completion", "lang"]
            assert r["completion"] in CATEGORIES and r["lang"] in ("en", "ko")
            assert len(r["prompt"].split()) <= MAX_WORDS, r
            assert "{" not in r["prompt"] and "}" not in r["prompt"], f"unfilled slot: {r}"


def serialise(rows: list[dict[str, str]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def summary(splits: Splits) -> str:
    lines = []
    for split, rows in splits.items():
        counts = Counter((r["completion"], r["lang"]) for r in rows)
        lines.append(f"{split}: {len(rows)} rows")
        for category in CATEGORIES:
            en, ko = counts[(category, "en")], counts[(category, "ko")]
            lines.append(f"  {category:<10} en={en:<3} ko={ko:<3} total={en + ko}")
        n_ko = sum(1 for r in rows if r["lang"] == "ko")
        leaks = sum(1 for r in rows if r["completion"] in r["prompt"].lower())
        lines.append(f"  korean share {n_ko / len(rows):.1%}; "
                     f"prompts containing their own label word: {leaks}/{len(rows)}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; fail if the files on disk differ from a fresh build")
    args = parser.parse_args()

    splits, sources = build(random.Random(SEED))
    check(splits, sources)
    if args.check:
        stale = [s for s, rows in splits.items()
                 if not (OUT_DIR / f"{s}.jsonl").is_file()
                 or (OUT_DIR / f"{s}.jsonl").read_bytes() != serialise(rows)]
        if stale:
            print(f"out of date: {', '.join(stale)}; rerun {Path(__file__).name}", file=sys.stderr)
            return 1
        print("support_tickets: files are up to date")
        return 0

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        (OUT_DIR / f"{split}.jsonl").write_bytes(serialise(rows))
    print(summary(splits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
