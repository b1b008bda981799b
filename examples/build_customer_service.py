"""Build the example dataset: a Chinese e-commerce customer-service assistant.

Deterministic for a given seed: `python examples/build_customer_service.py` rewrites
`examples/customer_service.jsonl` byte for byte. Each line is one OpenAI-style record:

    {"messages": [...], "tags": ["退货"]}                       a clean conversation
    {"messages": [...], "tags": ["退货"], "flaw": "phone"}  planted for the quality filter

Clean conversations are built from scenario templates × products × order numbers × user moods,
with computed specifics (amounts, dates, deadlines), so that no two of them are near-duplicates.
Identifiers are kept to digit runs of at most 10 so that order and tracking numbers never look
like a phone number, an ID card or a bank card to the PII rules.
"""

import argparse
import datetime as dt
import json
import random
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path(__file__).with_name("customer_service.jsonl")
DEFAULT_SEED = 20260301
CLEAN_COUNT = 600

SHOP = "优选生活官方旗舰店"
SYSTEM_PROMPT = (
    f"你是{SHOP}的在线客服助手“小优”。请用简体中文礼貌、准确地回答顾客关于订单、退换货、物流、"
    "发票、优惠券和支付的问题。售后政策：签收后7天内支持无理由退货（商品完好、不影响二次销售），"
    "15天内质量问题可换货；质量问题退换运费由本店承担。不确定的信息不要编造，需要人工处理时"
    "说明会转交专员及处理时限。不要索要顾客的银行卡号、密码或验证码。"
)

# (name, category, typical price)
PRODUCTS: list[tuple[str, str, int]] = [
    ("纯棉圆领T恤", "服装", 79),
    ("羊毛混纺大衣", "服装", 899),
    ("高腰直筒牛仔裤", "服装", 239),
    ("轻薄羽绒服", "服装", 459),
    ("真丝衬衫", "服装", 529),
    ("运动跑鞋", "鞋靴", 399),
    ("加绒马丁靴", "鞋靴", 329),
    ("无线降噪耳机", "数码", 1299),
    ("65W氮化镓充电器", "数码", 139),
    ("机械键盘", "数码", 469),
    ("智能手表", "数码", 1599),
    ("10000毫安充电宝", "数码", 119),
    ("平板电脑保护壳", "数码", 69),
    ("扫地机器人", "家电", 2399),
    ("空气炸锅", "家电", 349),
    ("电热水壶", "家电", 129),
    ("破壁料理机", "家电", 699),
    ("负离子吹风机", "家电", 299),
    ("除螨仪", "家电", 259),
    ("保湿精华液", "美妆", 329),
    ("氨基酸洗面奶", "美妆", 89),
    ("防晒霜", "美妆", 149),
    ("口红礼盒", "美妆", 459),
    ("每日坚果礼盒", "食品", 128),
    ("挂耳咖啡", "食品", 69),
    ("五常大米", "食品", 99),
    ("低脂牛奶整箱", "食品", 65),
    ("乳胶枕", "家居", 199),
    ("四件套床品", "家居", 359),
    ("不锈钢保温杯", "家居", 109),
    ("收纳箱三件套", "家居", 79),
    ("实木书桌", "家居", 1180),
    ("婴儿推车", "母婴", 1680),
    ("纸尿裤", "母婴", 169),
    ("儿童安全座椅", "母婴", 1290),
    ("奶瓶套装", "母婴", 139),
    ("儿童绘本套装", "图书", 198),
    ("考研英语真题", "图书", 59),
    ("瑜伽垫", "运动", 129),
    ("可调节哑铃", "运动", 589),
]

COURIERS = [("顺丰速运", "SF"), ("中通快递", "ZT"), ("圆通速递", "YT"), ("京东物流", "JD"), ("韵达快递", "YD")]
CITIES = [
    "北京",
    "上海",
    "广州",
    "深圳",
    "杭州",
    "成都",
    "武汉",
    "西安",
    "南京",
    "重庆",
    "长沙",
    "沈阳",
    "昆明",
    "厦门",
    "郑州",
    "青岛",
    "天津",
    "合肥",
    "福州",
    "哈尔滨",
]
PAY_METHODS = {
    "支付宝": "原路退回支付宝余额或原支付银行卡，一般即时到账，最迟不超过24小时",
    "微信支付": "原路退回微信零钱或原支付银行卡，一般即时到账，银行卡最迟1-3个工作日",
    "银行卡": "原路退回您付款的银行卡，通常需要1-5个工作日，具体以银行入账时间为准",
    "信用卡": "原路退回信用卡，银行处理需要3-7个工作日，退款会冲抵对应账单",
    "花呗": "原路退回花呗额度，若已出账单会在下期账单中抵扣，一般1个工作日内恢复额度",
}
SIZES = {
    "服装": ["S", "M", "L", "XL", "XXL"],
    "鞋靴": ["36码", "37码", "38码", "39码", "40码", "41码", "42码", "43码"],
}
COLORS = ["黑色", "白色", "雾霾蓝", "燕麦色", "酒红色", "墨绿色", "浅灰色", "卡其色", "藏青色", "樱花粉"]

# User moods: how a customer opens and closes, and how the assistant acknowledges them.
MOODS: dict[str, dict[str, list[str]]] = {
    "polite": {
        "open": ["您好，", "你好，麻烦问一下，", "打扰了，", "客服你好，想咨询一下，", "您好，请教个问题，"],
        "close": ["谢谢！", "麻烦了，谢谢。", "辛苦了。", "", "谢谢您。"],
        "ack": ["您好，感谢您的耐心咨询。", "您好，很高兴为您服务。", "您好，我来帮您处理。", "您好，收到您的问题。"],
    },
    "anxious": {
        "open": ["急！", "在吗在吗？", "客服能快点回复吗，", "着急问一下，", "有人吗？"],
        "close": ["挺急的，麻烦尽快。", "今天能给个答复吗？", "拜托了！", "等你们回复。", ""],
        "ack": [
            "理解您着急的心情，我马上帮您查看。",
            "您别着急，我这就为您处理。",
            "让您久等了，我立即为您核实。",
            "收到，我优先帮您处理。",
        ],
    },
    "angry": {
        "open": ["你们怎么回事？", "太让人失望了，", "我真的很生气，", "这是什么服务？", "说实话体验很差，"],
        "close": ["今天必须给我个说法！", "再这样我就给差评了。", "希望你们认真处理。", "别再敷衍我了。", ""],
        "ack": [
            "非常抱歉给您带来不好的体验，我会认真为您处理。",
            "实在抱歉让您生气了，这件事我来负责跟进。",
            "十分抱歉，是我们做得不到位，我马上处理。",
            "抱歉让您有这样的经历，我先帮您把问题解决。",
        ],
    },
    "terse": {
        "open": ["", "问下，", "请问", "咨询："],
        "close": ["", "", "谢。", "尽快。"],
        "ack": ["您好。", "收到。", "您好，为您解答。"],
    },
    "elderly": {
        "open": ["小姑娘你好，我不太会用手机，", "你好，我是帮女儿问的，", "同志你好，我年纪大了看不太懂，"],
        "close": ["你说慢一点，我照着做。", "谢谢你啊。", "麻烦你讲清楚一点。"],
        "ack": ["您好，不着急，我一步一步告诉您。", "您好，我说得详细一些，您慢慢看。", "您好，我来帮您，操作很简单。"],
    },
}
MOOD_WEIGHTS = {"polite": 5, "anxious": 2, "angry": 2, "terse": 2, "elderly": 1}

ASSISTANT_CLOSE = [
    "还有其他问题随时联系我。",
    "如有疑问可以继续在这里留言。",
    "祝您购物愉快！",
    "后续进展我们也会通过订单消息通知您。",
    "感谢您的理解与支持。",
    "",
]

# Defects that make sense for each category (a pram does not "fail to boot").
DEFECTS: dict[str, list[str]] = {
    "服装": ["开线了", "有明显色差", "拉链坏了", "有破洞", "起球严重"],
    "鞋靴": ["开胶了", "鞋底有裂口", "两只颜色不一样", "鞋面有划痕"],
    "数码": ["无法开机", "充不进电", "屏幕有坏点", "按键失灵", "接口松动"],
    "家电": ["通电没反应", "有异响", "外壳有裂痕", "用了两天就坏了", "少了配件"],
    "美妆": ["瓶口漏液", "外包装破损", "泵头按不出来", "有异味"],
    "食品": ["包装漏气", "有异味", "临近保质期", "里面有异物"],
    "家居": ["有异味", "有明显划痕", "少了配件", "尺寸不对"],
    "母婴": ["少了配件", "轮子卡顿", "卡扣松动", "有异味"],
    "图书": ["缺页", "印刷模糊", "封面破损", "装订散页"],
    "运动": ["有异味", "表面开裂", "配件松动", "少了配件"],
}

BASE_DATE = dt.date(2026, 3, 1)


class Ctx:
    """What one conversation is about: product, order, dates, money, mood."""

    def __init__(self, rng: random.Random, *, wearable: bool = False) -> None:
        self.rng = rng
        products = [p for p in PRODUCTS if p[1] in SIZES] if wearable else PRODUCTS
        self.product, self.category, base = rng.choice(products)
        self.price = round(base * rng.uniform(0.8, 1.15)) + rng.choice([0, 0.9, 0.5, 0.99])
        self.qty = rng.choice([1, 1, 1, 1, 2, 3])
        self.amount = round(self.price * self.qty, 2)
        self.order_date = BASE_DATE + dt.timedelta(days=rng.randint(0, 90))
        self.sign_date = self.order_date + dt.timedelta(days=rng.randint(2, 5))
        self.order_no = f"TL{self.order_date:%y%m%d}-{rng.randint(100000, 999999)}"
        self.courier, prefix = rng.choice(COURIERS)
        self.tracking = f"{prefix}{rng.randint(10**9, 10**10 - 1)}"
        self.city = rng.choice(CITIES)
        self.pay = rng.choice(list(PAY_METHODS))
        self.size = rng.choice(SIZES.get(self.category, ["均码"]))
        self.color = rng.choice(COLORS)
        self.mood = rng.choices(list(MOOD_WEIGHTS), weights=list(MOOD_WEIGHTS.values()))[0]

    def pick(self, options: list[str]) -> str:
        return self.rng.choice(options)

    def ask(self, body: str) -> str:
        """A user turn: mood opener + body + mood closer."""
        m = MOODS[self.mood]
        return f"{self.pick(m['open'])}{body}{self.pick(m['close'])}"

    def answer(self, body: str, *, ack: bool = True) -> str:
        head = self.pick(MOODS[self.mood]["ack"]) if ack else ""
        return f"{head}{body}{self.pick(ASSISTANT_CLOSE)}"

    @property
    def wearable(self) -> bool:
        return self.category in SIZES

    @property
    def item(self) -> str:
        if self.wearable:
            return f"{self.color}{self.product}（{self.size}）"
        return self.product


def money(x: float) -> str:
    return f"{x:,.2f}元"


def day(d: dt.date) -> str:
    return f"{d.month}月{d.day}日"


def workdays_after(d: dt.date, n: int) -> dt.date:
    while n:
        d += dt.timedelta(days=1)
        if d.weekday() < 5:
            n -= 1
    return d


# ---- scenarios: each returns the user/assistant turns after the system prompt --------------------


def scenario_return(c: Ctx) -> list[str]:
    deadline = c.sign_date + dt.timedelta(days=7)
    today = c.sign_date + dt.timedelta(days=c.rng.randint(1, 11))
    case = c.rng.choice(["no_reason", "quality", "late", "food", "progress"])
    if c.category == "食品" and case == "no_reason":
        case = "food"
    fee = c.rng.choice([8, 10, 12, 15])
    if case == "no_reason" and today > deadline:
        case = "late"
    if case == "no_reason":
        q = c.pick(
            [
                f"我{day(c.sign_date)}签收的{c.item}，试了一下不太合适，想退货，订单号{c.order_no}，还能退吗？",
                f"订单{c.order_no}买的{c.item}不想要了，{'没拆吊牌' if c.wearable else '包装都还在'}，"
                "可以七天无理由吗？",
                f"{c.item}收到后觉得和预期不一样，{day(today)}了还能申请退货吗？订单号是{c.order_no}。",
            ]
        )
        a = (
            f"订单{c.order_no}的{c.item}于{day(c.sign_date)}签收，7天无理由退货可以申请到{day(deadline)}，"
            f"现在完全来得及。请保持商品完好、{c.pick(['吊牌和包装齐全', '配件和赠品一并寄回', '不影响二次销售'])}，"
            f"在“我的订单”中选择“申请售后→退货退款”，原因选“七天无理由”即可。"
            f"无理由退货的寄回运费需要您承担，{c.pick(['如果下单时购买了运费险，', '若订单带有运费险，'])}"
            f"会自动理赔约{fee}元到您的账户。仓库签收验货后1-3个工作日内退款{money(c.amount)}，"
            f"{PAY_METHODS[c.pay]}。"
        )
    elif case == "quality":
        defect = c.pick(DEFECTS[c.category])
        q = c.pick(
            [
                f"买的{c.item}{defect}，订单{c.order_no}，要求退货！",
                f"订单号{c.order_no}，{c.product}{defect}，这算质量问题吧，怎么退？",
                f"{day(c.sign_date)}收到的{c.item}{defect}，我要退款，运费谁出？",
            ]
        )
        a = (
            f"收到的{c.product}{defect}属于质量问题，非常抱歉。请在“申请售后”中选择“质量问题”，"
            f"上传{c.pick(['2-3张问题部位的照片', '能看清问题的照片或短视频', '商品整体和问题细节的照片'])}，"
            f"审核通过后我们会为您预约{c.courier}上门取件，运费由本店承担，无需您垫付。"
            f"仓库收货确认后全额退款{money(c.amount)}，{PAY_METHODS[c.pay]}。"
            f"如果您更希望换一件新的，也可以在申请时选择“换货”。"
        )
    elif case == "late":
        late_day = deadline + dt.timedelta(days=c.rng.randint(1, 6))
        q = c.pick(
            [
                f"{c.item}是{day(c.sign_date)}签收的，今天{day(late_day)}想退，还可以吗？订单{c.order_no}",
                f"订单{c.order_no}过了7天了还能退货吗？东西没怎么用过。",
            ]
        )
        a = (
            f"查询到订单{c.order_no}于{day(c.sign_date)}签收，七天无理由退货的期限到{day(deadline)}为止，"
            f"目前已经超出，系统无法再发起无理由退货，抱歉。如果{c.product}存在质量问题，"
            f"签收后15天内（即{day(c.sign_date + dt.timedelta(days=15))}前）仍可申请质量问题退换，"
            f"请上传问题照片，审核通过后运费由我们承担。若商品没有问题，建议您保留使用或转赠他人。"
        )
    elif case == "food":
        q = c.pick(
            [
                f"买的{c.product}拆开尝了一包，不合口味，能退吗？订单{c.order_no}",
                f"订单{c.order_no}的{c.product}没拆封，可以退吗？一共{c.qty}件。",
            ]
        )
        a = (
            f"{c.product}属于食品，根据规定拆封后不支持七天无理由退货，还请理解。未拆封的部分，"
            f"在签收7天内（{day(deadline)}前）且包装完好、在保质期内，可以申请退货，退款按件计算，"
            f"单价{money(c.price)}。如果发现变质、异物或临近保质期等问题，请拍照申请质量问题售后，"
            f"我们会全额退款并承担运费。"
        )
    else:
        applied = c.sign_date + dt.timedelta(days=c.rng.randint(1, 5))
        received = applied + dt.timedelta(days=c.rng.randint(2, 4))
        q = c.pick(
            [
                f"退货{day(applied)}就寄回去了，退款{money(c.amount)}什么时候到账？订单{c.order_no}",
                f"订单{c.order_no}退款怎么还没到？快递单号{c.tracking}。",
            ]
        )
        a = (
            f"已为您查询：订单{c.order_no}的退货包裹（{c.courier} {c.tracking}）已于{day(received)}由仓库签收，"
            f"验货无误后会在{day(workdays_after(received, 3))}前完成退款{money(c.amount)}，"
            f"您付款使用的是{c.pay}，{PAY_METHODS[c.pay]}。到账后会有短信和订单消息提醒。"
        )
    turns = [c.ask(q), c.answer(a)]
    if c.rng.random() < 0.3:
        turns += c.pick(
            [
                [
                    "那优惠券会退回来吗？",
                    f"{c.pick(['会的。', '会退回。', '可以退回。'])}订单{c.order_no}整单退货时，使用的优惠券若仍在"
                    f"有效期内会退回您的账户；部分退货时按比例扣减，{c.product}的退款金额以页面显示的"
                    f"{money(c.amount)}为准。",
                ],
                [
                    f"运费险是自动赔的吗？要{c.pick(['我自己申请', '填什么资料'])}吗？",
                    f"订单{c.order_no}带有运费险，{c.product}的退货包裹被仓库签收后会自动理赔，"
                    f"一般1-3天到账，约{fee}元，不需要您单独申请。",
                ],
                [
                    "退货地址在哪里？",
                    f"订单{c.order_no}的退货申请审核通过后，页面会显示退货地址和收件人，请按页面信息寄回{c.product}，"
                    f"并在{c.pick(['48小时', '3天'])}内填写快递单号，方便我们及时跟进。",
                ],
            ]
        )
    return turns


def scenario_exchange(c: Ctx) -> list[str]:
    if not c.wearable and c.rng.random() < 0.6:
        c = Ctx(c.rng, wearable=True)  # most exchanges are about size or colour
    new_size = c.rng.choice([s for s in SIZES.get(c.category, ["均码"]) if s != c.size] or ["均码"])
    new_color = c.rng.choice([x for x in COLORS if x != c.color])
    ship_day = c.sign_date + dt.timedelta(days=c.rng.randint(2, 6))
    case = c.rng.choice(["size", "color", "defect", "stock"] if c.wearable else ["defect", "defect", "stock"])
    if case == "size":
        q = c.pick(
            [
                f"{c.product}{c.size}穿着不合身，想换成{new_size}，订单{c.order_no}，怎么操作？",
                f"订单{c.order_no}的{c.product}尺码不对，能换{new_size}吗？",
                f"尺码不合适，{c.item}想换{new_size}，运费怎么算？",
            ]
        )
        a = (
            f"可以为您换货。请在订单{c.order_no}中选择“申请售后→换货”，规格选{c.color}{new_size}，"
            f"目前{new_size}有现货。尺码换货每单首次免费，我们会安排{c.courier}上门取件，"
            f"寄回的{c.product}请保持吊牌完整。仓库收到后24小时内寄出新商品，"
            f"预计{day(ship_day + dt.timedelta(days=2))}左右送到{c.city}。"
        )
    elif case == "color":
        q = c.pick(
            [
                f"{c.product}{c.color}实物偏暗，想换{new_color}，订单{c.order_no}。",
                f"能把{c.color}换成{new_color}吗？{c.product}没穿过，{day(c.sign_date)}签收的。",
            ]
        )
        a = (
            f"签收7天内（{day(c.sign_date + dt.timedelta(days=7))}前）商品完好即可换颜色。"
            f"{new_color}{c.product}目前有货，请在售后页选择“换货”并备注{new_color}。"
            f"非质量问题换货，寄回运费需您承担，新商品由我们包邮寄出；如订单有运费险，可抵扣寄回运费。"
            f"新商品预计{day(ship_day)}发出。"
        )
    elif case == "defect":
        defect = c.pick(DEFECTS[c.category])
        q = c.pick(
            [
                f"{c.product}{defect}，订单{c.order_no}，我不要退款，换个新的。",
                f"收到的{c.product}{defect}，能直接换新吗？",
            ]
        )
        a = (
            f"{c.product}{defect}属于质量问题，签收15天内可以直接换新，来回运费都由本店承担。"
            f"请在订单{c.order_no}的售后页选择“换货”，上传问题照片，审核通常在2小时内完成，"
            f"随后{c.courier}会上门取件。新商品会在仓库收到旧件当天发出，"
            f"预计{day(ship_day)}前发货，发货后您可以在订单中查看新的物流单号。"
        )
    else:
        restock = c.sign_date + dt.timedelta(days=c.rng.randint(5, 12))
        q = c.pick(
            [
                f"我想换{new_size if c.wearable else '个新的'}，但页面显示没货了，怎么办？订单{c.order_no}",
                f"{c.product}想换{new_color if c.wearable else '同款新品'}，显示缺货，还会补货吗？",
            ]
        )
        a = (
            f"查询到{c.product}该规格暂时缺货，预计{day(restock)}补货。您可以选择：1. 先申请换货并备注，"
            f"补货后第一时间为您寄出；2. 直接申请退货退款{money(c.amount)}，之后再下单。"
            f"如果等待补货超出七天无理由期限，也不影响您的换货权益，我已为您登记。"
        )
    turns = [c.ask(q), c.answer(a)]
    if c.rng.random() < 0.3:
        turns += c.pick(
            [
                [
                    "换货期间旧的要先寄回吗？",
                    f"是的，需要先寄回旧商品，仓库签收后再发出新的{c.product}。如您着急，"
                    f"也可以先下单新的规格，再对原订单{c.order_no}申请退货退款。",
                ],
                [
                    "换货能换成别的商品吗？",
                    f"换货仅支持同款商品更换尺码或颜色。如果想换成其他商品，建议对{c.product}申请退货，"
                    f"退款{money(c.amount)}到账后再重新下单。",
                ],
            ]
        )
    return turns


def scenario_shipping(c: Ctx) -> list[str]:
    days_waiting = c.rng.randint(2, 8)
    case = c.rng.choice(["where", "stuck", "not_shipped", "address", "signed_not_received"])
    eta = c.order_date + dt.timedelta(days=c.rng.randint(3, 6))
    if case == "where":
        q = c.pick(
            [
                f"订单{c.order_no}到哪了？下单{days_waiting}天了。",
                f"我的{c.product}什么时候能到{c.city}？",
                f"帮我查下物流，{c.tracking}。",
            ]
        )
        a = (
            f"已为您查询：订单{c.order_no}的{c.product}由{c.courier}承运，运单号{c.tracking}，"
            f"目前已到达{c.city}转运中心，正在派送途中，预计{day(eta)}送达。"
            f"您也可以在订单详情中实时查看物流轨迹，派送前快递员会电话联系您。"
        )
    elif case == "stuck":
        q = c.pick(
            [
                f"{c.tracking}物流{days_waiting}天没更新了，是不是丢了？",
                f"订单{c.order_no}的物流一直停在{c.city}，怎么回事？",
            ]
        )
        a = (
            f"抱歉让您久等。运单{c.tracking}最后一次更新在{c.city}中转站，已超过72小时未更新，"
            f"我已向{c.courier}提交催件工单，通常24小时内会有反馈。若{day(eta + dt.timedelta(days=3))}前"
            f"仍无进展，我们会按丢件处理，为您补发{c.product}或全额退款{money(c.amount)}，由您选择。"
        )
    elif case == "not_shipped":
        q = c.pick(
            [
                f"{day(c.order_date)}下的单怎么还没发货？订单{c.order_no}",
                f"拍下{c.product}{days_waiting}天了，还显示待发货。",
            ]
        )
        a = (
            f"订单{c.order_no}的{c.product}属于{c.pick(['预售商品', '定制商品', '大促期间订单'])}，"
            f"承诺发货时间为下单后{c.pick(['72小时', '5天', '7天'])}内。我已为您加急，"
            f"预计{day(c.order_date + dt.timedelta(days=days_waiting + 1))}前由{c.courier}发出，"
            f"发货后会短信通知您。如超时未发货，可申请延迟发货赔付。"
        )
    elif case == "address":
        q = c.pick(
            [
                f"订单{c.order_no}地址填错了，能改到{c.city}吗？",
                f"刚下的{c.product}想改收货地址，来得及吗？",
            ]
        )
        a = (
            f"订单{c.order_no}目前{c.pick(['还未出库', '正在打包'])}，可以修改。请在订单详情点击“修改地址”，"
            f"改为{c.city}的新地址后保存即可，修改仅限一次。若系统提示无法修改，说明包裹已出库，"
            f"我们会联系{c.courier}转寄，转寄可能产生额外运费并延迟1-2天。"
        )
    else:
        q = c.pick(
            [
                f"显示{day(c.sign_date)}已签收，但我没收到{c.product}！",
                f"订单{c.order_no}显示签收了，家里没人收到啊。",
            ]
        )
        a = (
            f"非常抱歉。运单{c.tracking}显示{day(c.sign_date)}签收，建议您先查看快递柜、驿站或门卫处。"
            f"我已联系{c.courier}核实签收人和签收凭证，24小时内给您答复。"
            f"若确认未妥投，我们会为您补发{c.product}或退款{money(c.amount)}，无需您承担任何费用。"
        )
    turns = [c.ask(q), c.answer(a)]
    if c.rng.random() < 0.3:
        turns += c.pick(
            [
                [
                    "能指定周末送吗？",
                    f"可以的。运单{c.tracking}还在{c.courier}派送流程中，您可以在订单详情留言“周末配送”，"
                    f"或联系派送员预约时间；也可以改送到{c.city}附近的驿站，方便您自取{c.product}。",
                ],
                [
                    "能换顺丰吗？",
                    f"订单{c.order_no}已经出库，运单{c.tracking}由{c.courier}承运，无法再更换快递公司。"
                    f"下次下单可以在结算页选择顺丰配送，需补差价约{c.pick(['6元', '8元', '10元'])}。",
                ],
            ]
        )
    return turns


def scenario_invoice(c: Ctx) -> list[str]:
    company = c.pick(
        [
            "杭州云帆科技有限公司",
            "上海明远贸易有限公司",
            "成都青禾文化传媒有限公司",
            "深圳锐拓电子有限公司",
            "北京知行教育咨询有限公司",
            "武汉恒信建材有限公司",
        ]
    )
    case = c.rng.choice(["normal", "special", "change", "missing"])
    if case == "normal":
        q = c.pick(
            [
                f"订单{c.order_no}能开发票吗？抬头写个人。",
                f"买的{c.product}要开电子发票，怎么弄？",
                f"{c.product}发票可以开公司抬头吗？{company}",
            ]
        )
        a = (
            f"可以开具电子普通发票。订单{c.order_no}确认收货后，在订单详情点击“申请开票”，"
            f"填写抬头（个人或单位名称；单位需填写纳税人识别号），发票金额为实付{money(c.amount)}，"
            f"开具后1-3个工作日内会发送到您在订单中预留的邮箱，也可以在“我的发票”中下载PDF。"
        )
    elif case == "special":
        q = c.pick(
            [
                f"我们公司{company}需要增值税专用发票，订单{c.order_no}。",
                f"能开专票吗？买了{c.qty}件{c.product}，报销要用。",
            ]
        )
        a = (
            f"可以开具增值税专用发票。请在订单{c.order_no}的开票页选择“增值税专用发票”，"
            f"填写单位名称、纳税人识别号、注册地址、电话、开户行及账号，并上传一般纳税人证明。"
            f"审核通过后专票为电子专票，金额{money(c.amount)}，一般3-5个工作日开具完成。"
        )
    elif case == "change":
        q = c.pick(
            [
                f"发票抬头开错了，想改成{company}。",
                f"订单{c.order_no}的发票税号填错了，能重开吗？",
            ]
        )
        a = (
            f"可以换开。发票开具后180天内支持换开一次：请在“我的发票”找到订单{c.order_no}，"
            f"点击“换开发票”，填写正确的抬头和税号，原发票会自动作废。新发票金额仍为{money(c.amount)}，"
            f"1-3个工作日内重新发送。注意已经用于报销入账的发票需要先由贵单位做红冲处理。"
        )
    else:
        applied = c.sign_date + dt.timedelta(days=c.rng.randint(1, 4))
        q = c.pick(
            [
                f"{day(applied)}申请的发票一直没收到，订单{c.order_no}。",
                f"电子发票说发了，邮箱里没有啊，{c.product}那单。",
            ]
        )
        a = (
            f"已查询到订单{c.order_no}的发票于{day(workdays_after(applied, 2))}开具完成。"
            f"邮件可能被归入垃圾邮件，请查看一下；也可以直接在“我的发票”中下载PDF。"
            f"如需重新发送到其他邮箱，可在发票详情中点击“重新发送”并填写新邮箱。"
        )
    turns = [c.ask(q), c.answer(a)]
    if c.rng.random() < 0.25:
        turns += [
            "退货后发票怎么办？",
            f"订单{c.order_no}整单退货后，{money(c.amount)}的发票会自动作废；部分退货会按剩余金额重新开具。"
            f"如果{c.product}的发票已经报销，请先联系财务做红字发票处理，再申请退款。",
        ]
    return turns


def scenario_complaint(c: Ctx) -> list[str]:
    case = c.rng.choice(["courier", "service", "description", "delay", "packaging"])
    c.mood = c.rng.choice(["angry", "angry", "anxious", "terse"])  # nobody complains cheerfully
    coupon = c.rng.choice([10, 15, 20, 30, 50])
    callback = c.pick(["24小时内", "当天18点前", "1个工作日内", "48小时内"])
    if case == "courier":
        q = c.pick(
            [
                f"{c.courier}的快递员没打电话就把{c.product}扔门口了，还丢了！",
                f"快递员态度太差，订单{c.order_no}，我要投诉！",
            ]
        )
        a = (
            f"我已记录投诉：订单{c.order_no}，承运方{c.courier}，运单{c.tracking}。"
            f"我们会在{callback}联系快递公司核实，并把处理结果通过订单消息告知您。"
            f"若包裹确实丢失，将为您补发{c.product}或退款{money(c.amount)}；"
            f"为表歉意，已向您的账户发放一张{coupon}元无门槛优惠券。"
        )
    elif case == "service":
        q = c.pick(
            [
                f"{c.pick(['昨天', '前天', '这两天'])}问了{c.rng.randint(2, 5)}次客服都没人回，"
                f"订单{c.order_no}，这就是你们的服务？",
                f"之前的客服说帮我处理{c.product}退款，结果什么都没做！",
            ]
        )
        a = (
            f"对于之前没有及时回复您，我们深表歉意。我已把您的问题升级给售后专员，并备注订单{c.order_no}的"
            f"处理记录，专员会在{callback}主动联系您并跟进到底。"
            f"这次的服务问题也已反馈给客服主管，补偿您一张{coupon}元优惠券，已发放到账户。"
        )
    elif case == "description":
        diff = c.pick(
            ["颜色和图片差很多", "材质不是页面写的纯棉", "尺寸比详情页小一圈", "功能和宣传不一致", "实物比图片旧"]
        )
        q = c.pick(
            [
                f"{c.product}{diff}，这不是虚假宣传吗？订单{c.order_no}",
                f"收到的{c.item}{diff}，我要投诉商品描述不符。",
            ]
        )
        a = (
            f"您反馈的{c.product}{diff}，属于描述不符，我们非常重视。您可以申请“描述不符”退货，"
            f"来回运费由本店承担，退款{money(c.amount)}；也可以保留商品，我们补偿差价"
            f"{money(round(c.amount * c.rng.choice([0.1, 0.15, 0.2]), 2))}。商品页面的描述问题"
            f"已提交运营核查，{callback}内完成修正。"
        )
    elif case == "delay":
        q = c.pick(
            [
                f"说好{day(c.order_date + dt.timedelta(days=3))}前发货，现在还没发，你们不守信用！",
                f"订单{c.order_no}一拖再拖，我要投诉延迟发货。",
            ]
        )
        a = (
            f"非常抱歉，订单{c.order_no}确实超出了承诺的发货时间。按平台规则，"
            f"我们会向您赔付订单金额的5%（{money(round(c.amount * 0.05, 2))}），以无门槛券形式发放；"
            f"{c.product}已加急安排，{callback}由{c.courier}发出。若您不想再等，可以直接申请退款，"
            f"系统会秒退。"
        )
    else:
        q = c.pick(
            [
                f"{c.product}外箱都压扁了，里面也磕坏了，包装太敷衍了。",
                f"订单{c.order_no}的包装破了，{c.product}有磕碰。",
            ]
        )
        a = (
            f"抱歉{c.product}在运输中受损。请拍摄外箱和商品受损部位的照片，在售后页选择“运输损坏”，"
            f"我们会在{callback}审核，为您免费换新或退款{money(c.amount)}，运费由本店承担。"
            f"同时已把包装问题反馈给仓库，后续会加强{c.category}类商品的防护。"
        )
    turns = [c.ask(q), c.answer(a)]
    if c.rng.random() < 0.35:
        turns += c.pick(
            [
                [
                    "光给优惠券有什么用？",
                    f"理解您的感受，优惠券只是一点心意，不代替问题的处理。订单{c.order_no}里{c.product}的问题"
                    f"我会跟进到结束，"
                    f"专员{callback}联系您，若对结果不满意，可以随时再找我，或申请平台客服介入。",
                ],
                [
                    "我要找你们领导。",
                    f"好的，我已将订单{c.order_no}的投诉升级给客服主管，主管会在{callback}联系您。"
                    f"处理进度可以在“我的投诉”中查看。",
                ],
            ]
        )
    return turns


def scenario_coupon(c: Ctx) -> list[str]:
    threshold = c.rng.choice([99, 199, 299, 399, 599, 999])
    off = c.rng.choice([10, 20, 30, 50, 80, 100])
    off = min(off, threshold // 3)
    expiry = c.order_date + dt.timedelta(days=c.rng.randint(3, 20))
    case = c.rng.choice(["not_applied", "expired", "stack", "refund"])
    if case == "not_applied":
        q = c.pick(
            [
                f"我有张满{threshold}减{off}的券，买{c.product}怎么用不了？",
                f"结算{c.product}的时候优惠券显示不可用，满{threshold}减{off}那张。",
            ]
        )
        if c.amount < threshold:
            why = f"还差{money(threshold - c.amount)}，可以凑单后再使用"
        else:
            why = "已满足门槛，可能是该商品不在券的适用范围内，请在券详情查看“适用商品”"
        a = (
            f"满{threshold}减{off}的优惠券需要参与活动的商品实付金额达到{threshold}元才可使用。"
            f"您这单{c.product}的金额是{money(c.amount)}，{why}。"
            f"此券有效期到{day(expiry)}，请在有效期内使用。"
        )
    elif case == "expired":
        q = c.pick(
            [
                f"优惠券{day(expiry)}就过期了，我都没注意，能补发吗？",
                f"满{threshold}减{off}的券过期了，想买{c.product}，能延期吗？",
            ]
        )
        a = (
            f"很抱歉，已过期的优惠券系统无法恢复或延期。您满{threshold}减{off}的券于{day(expiry)}到期。"
            f"当前店铺有{c.pick(['新人', '会员日', '店铺关注'])}活动，可以领取满{threshold}减{max(5, off // 2)}"
            f"的券，领取后7天内有效，建议下单前在“我的优惠券”中确认有效期。"
        )
    elif case == "stack":
        q = c.pick(
            [
                f"店铺券和平台满减能一起用吗？想买{c.product}。",
                f"{c.product}能同时用两张满{threshold}减{off}的券吗？",
            ]
        )
        a = (
            f"同一订单只能使用一张店铺券，但可以与平台跨店满减、红包叠加使用。以{c.product}"
            f"（{money(c.price)}）为例，先计算店铺券，再计算平台优惠，最终以结算页显示为准。"
            f"两张相同的满{threshold}减{off}券不能在同一订单中叠加。"
        )
    else:
        q = c.pick(
            [
                f"退了{c.product}，用的满{threshold}减{off}的券还能退回来吗？",
                f"订单{c.order_no}退款了，优惠券去哪了？",
            ]
        )
        a = (
            f"订单{c.order_no}整单退款后，满{threshold}减{off}的优惠券如果还在有效期内（{day(expiry)}前），"
            f"会在退款完成后24小时内退回到“我的优惠券”；已过期的券不再退回。"
            f"部分退款时优惠券不退回，优惠金额按商品金额比例分摊扣除。"
        )
    turns = [c.ask(q), c.answer(a)]
    if c.rng.random() < 0.2:
        turns += [
            "会员还有别的优惠吗？",
            f"会员每月{c.pick(['1日', '8日', '18日'])}有会员日，{c.category}类商品享9.5折，"
            f"以{c.product}为例，{money(c.price)}折后为{money(round(c.price * 0.95, 2))}；"
            f"积分还可以按100积分抵1元使用，单笔最多抵扣订单金额的{c.pick(['10%', '20%'])}。",
        ]
    return turns


def scenario_payment(c: Ctx) -> list[str]:
    case = c.rng.choice(["double", "failed", "installment", "paid_unpaid"])
    if case == "double":
        q = c.pick(
            [
                f"付款的时候扣了两次钱！{money(c.amount)}扣了两遍，订单{c.order_no}",
                f"{c.pay}被重复扣款了，买{c.product}的，快退给我。",
            ]
        )
        a = (
            f"查询到订单{c.order_no}在{day(c.order_date)}有两笔{money(c.amount)}的支付记录，"
            f"第二笔为重复支付，系统会在{c.pick(['24小时', '1-3个工作日'])}内自动原路退回，"
            f"{PAY_METHODS[c.pay]}。请不要向任何自称客服的人提供银行卡号或验证码，"
            f"本店不会以任何理由索要。"
        )
    elif case == "failed":
        q = c.pick(
            [
                f"买{c.product}一直支付失败，{c.pay}提示“交易异常”。",
                f"付款失败但钱被扣了，订单{c.order_no}怎么办？",
            ]
        )
        a = (
            f"支付失败但已扣款的情况，通常是支付通道未及时回传结果，款项会在1-3个工作日内自动退回。"
            f"订单{c.order_no}目前显示{c.pick(['待付款', '已关闭'])}，您可以重新下单，"
            f"{c.product}的价格{money(c.price)}会保留到{day(c.order_date + dt.timedelta(days=1))}。"
            f"如果多次失败，建议更换支付方式或检查{c.pay}的单笔限额。"
        )
    elif case == "installment":
        periods = c.rng.choice([3, 6, 12])
        q = c.pick(
            [
                f"{c.product}能分期吗？分{periods}期有手续费吗？",
                f"我想分{periods}期买{c.product}，怎么选？",
            ]
        )
        fee_note = (
            "本店承担手续费，免息"
            if c.amount >= 1000 and periods <= 6
            else f"手续费约{c.pick(['1.8%', '2.3%', '4.5%'])}，由支付平台收取"
        )
        a = (
            f"{c.product}（{money(c.amount)}）支持花呗和信用卡分期。分{periods}期时{fee_note}，"
            f"每期约{money(round(c.amount / periods, 2))}。在结算页选择“分期付款”后即可看到每期金额，"
            f"以支付页面显示为准。"
        )
    else:
        q = c.pick(
            [
                f"我已经付款了，订单{c.order_no}怎么还显示待付款？",
                f"{c.pay}显示支付成功，但{c.product}订单状态没变。",
            ]
        )
        a = (
            f"支付结果同步偶尔会有几分钟延迟。查询到订单{c.order_no}的{money(c.amount)}"
            f"{c.pick(['已到账', '已支付成功'])}，订单状态将在15分钟内更新为“待发货”，不影响发货时效。"
            f"请不要重复付款；若重复支付，多付的款项会自动原路退回。"
        )
    return [c.ask(q), c.answer(a)]


SCENARIOS: list[tuple[str, Callable[[Ctx], list[str]], int]] = [
    ("退货", scenario_return, 110),
    ("换货", scenario_exchange, 85),
    ("物流", scenario_shipping, 110),
    ("发票", scenario_invoice, 75),
    ("投诉", scenario_complaint, 85),
    ("优惠券", scenario_coupon, 70),
    ("支付", scenario_payment, 65),
]


def conversation(turns: list[str]) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for i, text in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return messages


def clean_records(rng: random.Random) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    seen: set[str] = set()  # first user turns already used; retries keep questions distinct
    for tag, make, count in SCENARIOS:
        made = 0
        while made < count:
            turns = make(Ctx(rng))
            if turns[0] in seen:
                continue
            seen.add(turns[0])
            records.append({"messages": conversation(turns), "tags": [tag]})
            made += 1
    rng.shuffle(records)
    return records


# ---- planted flaws --------------------------------------------------------------------------------


def to_fullwidth(text: str) -> str:
    """ASCII letters and digits to their full-width forms (what a Chinese IME often produces)."""
    return "".join(chr(ord(ch) + 0xFEE0) if ch.isascii() and ch.isalnum() else ch for ch in text)


def id_card(rng: random.Random) -> str:
    """A mainland resident ID with a valid GB 11643 checksum."""
    body = f"{rng.choice(['110105', '310104', '440305', '330106'])}19{rng.randint(60, 99)}"
    body += f"{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(100, 999)}"
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    check = "10X98765432"[sum(int(d) * w for d, w in zip(body, weights, strict=True)) % 11]
    return body + check


def luhn_card(rng: random.Random) -> str:
    """A 19-digit UnionPay-style card number that passes the Luhn check."""
    body = "622202" + "".join(str(rng.randint(0, 9)) for _ in range(12))
    total = 0
    for i, d in enumerate(reversed(body)):
        n = int(d) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return body + str((10 - total % 10) % 10)


def with_answer(record: dict[str, Any], answer: str) -> list[dict[str, str]]:
    messages = [dict(m) for m in record["messages"]]
    messages[-1]["content"] = answer
    return messages


def flawed_records(rng: random.Random, clean: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def base(i: int) -> dict[str, Any]:
        return clean[i * 37 % len(clean)]

    def flaw(record: dict[str, Any], name: str, messages: list[dict[str, str]]) -> dict[str, Any]:
        # "_base": which clean record this was made from; `build` places the flaw after it.
        base_index = next((k for k, c in enumerate(clean) if c is record), 0)
        return {"messages": messages, "tags": list(record["tags"]), "flaw": name, "_base": base_index}

    def fresh() -> dict[str, Any]:
        # A new conversation, not a copy of a clean one: the flaw is the only thing wrong with it
        # (a masked copy would otherwise also be a near-duplicate of its original).
        tag, make, _ = rng.choice(SCENARIOS)
        return {"messages": conversation(make(Ctx(rng))), "tags": [tag]}

    out: list[dict[str, Any]] = []
    # Exact duplicates: verbatim, full-width digits/letters, and stray whitespace.
    r = base(1)
    out.append(flaw(r, "exact_duplicate", [dict(m) for m in r["messages"]]))
    r = base(2)
    out.append(
        flaw(
            r,
            "exact_duplicate",
            [{**m, "content": to_fullwidth(m["content"])} if m["role"] != "system" else dict(m) for m in r["messages"]],
        )
    )
    r = base(3)
    out.append(
        flaw(
            r,
            "exact_duplicate",
            [{**m, "content": f"  {m['content']} \n"} if m["role"] == "user" else dict(m) for m in r["messages"]],
        )
    )
    # Near-duplicates: one or two small edits to a long conversation.
    longest = sorted(range(len(clean)), key=lambda i: -len(json.dumps(clean[i], ensure_ascii=False)))
    for n, i in enumerate(longest[:3]):
        r = clean[i]
        messages = [dict(m) for m in r["messages"]]
        edits = [("您好", "你好"), ("。", "！"), ("可以", "能够")]
        old, new = edits[n]
        messages[-1]["content"] = messages[-1]["content"].replace(old, new, 1)
        messages[1]["content"] = messages[1]["content"].rstrip("。！？?") + "？"
        out.append(flaw(r, "near_duplicate", messages))

    # Personal data and secrets.
    r = fresh()
    msgs = [dict(m) for m in r["messages"]]
    msgs[1]["content"] += "我的手机号是13812345678，有问题直接打给我。"
    out.append(flaw(r, "phone", msgs))
    r = fresh()
    out.append(
        flaw(
            r,
            "phone",
            with_answer(r, r["messages"][-1]["content"] + "如需进一步帮助，可以拨打专员小王的手机15907551234。"),
        )
    )
    r = fresh()
    msgs = [dict(m) for m in r["messages"]]
    msgs[1]["content"] += f"实名认证用的身份证号是{id_card(rng)}，你们查一下。"
    out.append(flaw(r, "id_card", msgs))
    r = fresh()
    msgs = [dict(m) for m in r["messages"]]
    msgs[1]["content"] += f"退款请直接打到我的银行卡{luhn_card(rng)}。"
    out.append(flaw(r, "bank_card", msgs))
    r = fresh()
    msgs = [dict(m) for m in r["messages"]]
    msgs[1]["content"] += "发票请发到 zhang.wei1988@example.com 这个邮箱。"
    out.append(flaw(r, "email", msgs))
    r = fresh()
    key = "sk-" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(40))
    msgs = [dict(m) for m in r["messages"]]
    msgs[1]["content"] += f"我是开发者，用你们开放平台的密钥 {key} 查不到订单。"
    out.append(flaw(r, "api_key", msgs))

    # Bad answers.
    r = fresh()
    out.append(flaw(r, "empty_answer", with_answer(r, "")))
    r = fresh()
    out.append(flaw(r, "empty_answer", with_answer(r, "   ")))
    r = fresh()
    out.append(flaw(r, "answer_copies_prompt", with_answer(r, r["messages"][-2]["content"])))
    r = fresh()
    out.append(flaw(r, "repetitive_answer", with_answer(r, "好的。" * 40)))
    r = fresh()
    out.append(flaw(r, "repetitive_answer", with_answer(r, "请您耐心等待处理结果。" * 15)))
    r = fresh()
    # Over-long: a varied (not repetitive) answer of several thousand characters.
    lines = []
    for k in range(1, 281):
        p_name, p_cat, p_price = PRODUCTS[k % len(PRODUCTS)]
        lines.append(
            f"第{k}条：{p_cat}类商品{p_name}（参考价{p_price + k}元）在{CITIES[k % len(CITIES)]}"
            f"仓发货，签收后{7 + k % 9}天内可按对应规则办理售后，运费按首重{k % 5 + 8}元计算。"
        )
    out.append(flaw(r, "too_long", with_answer(r, "以下是全部售后细则，请您逐条阅读：" + "".join(lines))))
    r = fresh()
    out.append(flaw(r, "too_short", with_answer(r, "嗯")))
    r = fresh()
    out.append(flaw(r, "too_short", with_answer(r, "哦")))
    return out


def build(seed: int = DEFAULT_SEED) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    clean = clean_records(rng)
    flawed = flawed_records(random.Random(seed + 1), clean)
    # Scatter the flawed records through the file, each somewhere after the clean record it was
    # made from: duplicate filters keep the first occurrence, so the clean original survives.
    after: dict[int, list[dict[str, Any]]] = {}
    for record in flawed:
        base_index = record.pop("_base")
        after.setdefault(rng.randint(base_index, len(clean) - 1), []).append(record)
    records: list[dict[str, Any]] = []
    for i, record in enumerate(clean):
        records.append(record)
        records.extend(after.get(i, []))
    return records


def write(records: list[dict[str, Any]], out: Path) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSONL")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (same seed → same bytes)")
    args = parser.parse_args(argv)
    records = build(args.seed)
    write(records, args.out)
    flawed = sum(1 for r in records if "flaw" in r)
    print(f"wrote {len(records)} records ({len(records) - flawed} clean, {flawed} flawed) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
